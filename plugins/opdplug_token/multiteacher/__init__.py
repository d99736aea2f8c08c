"""Multi-teacher OPD: several ``[[teachers]]``, each prompt routed to one or a weighted mixture."""
