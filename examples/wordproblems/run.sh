#!/usr/bin/env bash
# The whole word-problem example, from nothing to the table in the README (about 15 minutes on
# 2 CPU cores): data and models, teacher SFT, the student's cold start, then OPD and, for
# comparison, continued SFT from the same cold start; each evaluated on the 500 held-out problems.
# Run from the repository root with the project's venv active (make demo or make test makes it).
set -euo pipefail
python examples/wordproblems/build.py
opdplug train configs/wordproblems_teacher_sft.toml
opdplug train configs/wordproblems_student_cold_start.toml
opdplug train configs/wordproblems_opd.toml
opdplug train configs/wordproblems_sft_baseline.toml
declare -A models=(
  ["student before training"]="models/wordproblems/student-init --config configs/wordproblems_opd.toml"
  ["teacher (SFT, 1500 steps)"]="runs/wordproblems/teacher"
  ["student after cold start (SFT, 300 steps)"]="runs/wordproblems/student_cold_start"
  ["student + OPD (1200 steps)"]="runs/wordproblems/opd"
  ["student + continued SFT (1200 steps)"]="runs/wordproblems/sft_baseline"
)
echo "| model | held-out accuracy |"
echo "|---|---|"
for name in "student before training" "teacher (SFT, 1500 steps)" "student after cold start (SFT, 300 steps)" \
            "student + OPD (1200 steps)" "student + continued SFT (1200 steps)"; do
  # shellcheck disable=SC2086
  acc=$(opdplug eval ${models[$name]} -n 0 --json | python -c "import json,sys; print(f\"{json.load(sys.stdin)['accuracy']:.3f}\")")
  echo "| $name | $acc |"
done
