"""The plugin manager and the component registry.

A fresh ``PluginManager`` per run: the core's built-in plugin, then every distribution that
declares an ``opdplug`` entry point (first-party plugins do too), then plugins passed in code.
``check_pending()`` makes a misspelt ``opd_*`` hook fail loudly.

Environment switches:
  ``OPDPLUG_DISABLE_PLUGIN_AUTOLOAD=1``  load no entry points (only the core and explicit ones);
  ``OPDPLUG_PLUGINS=token,mine``         load only these entry-point names.

A plugin that fails to import does not stop the run: it is recorded with its error, listed by
``opdplug plugins``, and named in the error only if the config asks for a component that is
not registered (it may have been the failed plugin's).
"""
from __future__ import annotations

import dataclasses
import typing
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from . import hookspecs, stages
from .errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "opdplug"
ENV_DISABLE_AUTOLOAD = "OPDPLUG_DISABLE_PLUGIN_AUTOLOAD"
ENV_ONLY = "OPDPLUG_PLUGINS"

@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``opdplug plugins`` shows it."""

    name: str
    """Registered plugin name (the entry-point name for installed plugins)."""
    distribution: str = ""
    """The distribution that provides it ("" for plugins registered in code)."""
    version: str = ""
    """The distribution's version."""
    hooks: list[str] = field(default_factory=list)
    """The ``opd_*`` hooks it implements."""
    provides: dict[str, list[str]] = field(default_factory=dict)
    """Component names it registered, by kind."""
    error: str = ""
    """Why it failed to load ("" if it loaded)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def make_plugin_manager(plugins: Iterable[Any] = (), *, autoload: bool | None = None) -> "Manager":
    """A fresh plugin manager with the core, the installed plugins and ``plugins``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    # Historic: every plugin registered from now on adds its own hookspecs as it arrives.
    pm.hook.opd_addhooks.call_historic(kwargs={"pluginmanager": pm})
    manager = Manager(pm)
    manager.register(stages, "opdplug", distribution="opdplug")
    if autoload is None:
        autoload = not _env_flag(ENV_DISABLE_AUTOLOAD)
    if autoload:
        manager.load_entry_points()
    for plugin in plugins:
        manager.register(plugin, getattr(plugin, "__name__", None) or type(plugin).__name__)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.pm.get_name(exc.plugin) if exc.plugin is not None else "?"
        raise PluginError(
            f"plugin {name!r}: {str(exc).splitlines()[0]} (a misspelt opd_* hook, or one declared by a "
            f"plugin that is not loaded: check OPDPLUG_PLUGINS)"
        ) from None
    return manager


class Manager:
    """The pluggy manager plus what opdplug knows about each plugin."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.hook = pm.hook
        self.infos: dict[str, PluginInfo] = {}
        self.skipped: list[str] = []
        """Installed plugins that ``OPDPLUG_PLUGINS`` left out (named in unknown-component errors)."""
        self._registry: Registry | None = None

    def register(self, plugin: Any, name: str, distribution: str = "", version: str = "") -> None:
        if name in self.infos and not self.infos[name].error:
            raise PluginError(f"two plugins are named {name!r}; rename one of the entry points")
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {name!r} cannot be registered: {str(exc).splitlines()[0]}") from None
        if distribution and not version:
            try:
                version = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                version = ""
        hooks = sorted(impl for impl in dir(plugin) if impl.startswith("opd_"))
        self.infos[name] = PluginInfo(name, distribution, version, hooks)
        self._registry = None

    def load_entry_points(self) -> None:
        only = {n.strip() for n in os.environ.get(ENV_ONLY, "").split(",") if n.strip()}
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        unknown = sorted(only - {ep.name for ep in entry_points})
        if unknown:
            installed = ", ".join(sorted({ep.name for ep in entry_points})) or "(none)"
            raise PluginError(f"{ENV_ONLY} names {unknown[0]!r}, which no installed plugin is called; installed: {installed}")
        for ep in entry_points:
            if only and ep.name not in only:
                self.skipped.append(ep.name)
                continue
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            if ep.name in self.infos:
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the run down
                first = str(exc).splitlines()[0] if str(exc) else ""
                self.infos[ep.name] = PluginInfo(
                    ep.name, dist, version, error=f"{type(exc).__name__}: {first}"
                )
                continue
            self.register(plugin, ep.name, dist, version)

    @property
    def failed(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.error]

    @property
    def registry(self) -> "Registry":
        if self._registry is None:
            self._registry = Registry(self)
        return self._registry

    def plugin_tables(self) -> dict[str, type]:
        """Config tables declared through ``opd_add_options``, checked for clashes."""
        from .config import CORE_TABLES

        tables: dict[str, type] = {}
        owners: dict[str, str] = {}
        for plugin_name, impl in self._impls("opd_add_options"):

            def register(table: str, cls: type, _owner: str = plugin_name) -> None:
                if table in CORE_TABLES or table in tables:
                    other = "opdplug" if table in CORE_TABLES else owners[table]
                    raise PluginError(f"plugin {_owner!r} declares config table [{table}], already taken by {other!r}")
                # A dataclass is a table; ``list[dataclass]`` an array of tables (``[[table]]``).
                item = typing.get_args(cls)[0] if typing.get_origin(cls) is list and typing.get_args(cls) else cls
                if not dataclasses.is_dataclass(item):
                    raise PluginError(f"plugin {_owner!r}: config table [{table}] must be a dataclass or a list of one")
                tables[table] = cls
                owners[table] = _owner

            impl.function(register=register)
        return tables

    def _impls(self, hook_name: str):
        caller = getattr(self.hook, hook_name)
        # get_hookimpls() lists impls in registration order (pluggy calls them last-first).
        for impl in caller.get_hookimpls():
            yield impl.plugin_name, impl

    def versions(self) -> dict[str, str]:
        """Plugin name -> "distribution==version", saved with every checkpoint."""
        return {
            info.name: f"{info.distribution or info.name}=={info.version or '?'}"
            for info in self.infos.values()
            if not info.error
        }


def kind_label(manager: "Manager", kind: str) -> str:
    """How one component of ``kind`` is called in messages (see ``hookspecs.registry_kind``)."""
    caller = getattr(manager.hook, hookspecs.REGISTRY_PREFIX + kind, None)
    spec = getattr(caller, "spec", None)
    label = getattr(getattr(spec, "function", None), "opd_kind_label", None)
    return label or kind.replace("_", " ").removesuffix("s")


class Registry:
    """Named components by kind, filled by the ``opd_register_<kind>`` hooks. The kinds are the
    registry hookspecs the loaded plugins declared; a kind nobody declared does not exist."""

    def __init__(self, manager: Manager):
        self.manager = manager
        self.kinds = sorted(
            name[len(hookspecs.REGISTRY_PREFIX):] for name in vars(manager.hook)
            if name.startswith(hookspecs.REGISTRY_PREFIX) and getattr(manager.hook, name).spec is not None
        )
        self.components: dict[str, dict[str, Any]] = {kind: {} for kind in self.kinds}
        self.owners: dict[str, dict[str, str]] = {kind: {} for kind in self.kinds}
        self.defaults: dict[str, str] = {}
        for kind in self.kinds:
            for plugin_name, impl in manager._impls(hookspecs.REGISTRY_PREFIX + kind):
                register = self._register_callback(kind, plugin_name)
                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {plugin_name!r} failed in opd_register_{kind}: {type(exc).__name__}: {exc}"
                    ) from None

    def _register_callback(self, kind: str, owner: str):
        label = kind_label(self.manager, kind)

        def register(name: str, obj: Any, default: bool = False) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {owner!r} registered a {label} without a name")
            if name in self.components[kind]:
                raise PluginError(
                    f"{label} {name!r} is registered by both {self.owners[kind][name]!r} and {owner!r}; "
                    f"uninstall or disable one (OPDPLUG_PLUGINS selects which entry points load)"
                )
            if default and kind in self.defaults:
                raise PluginError(
                    f"plugins {self.owners[kind][self.defaults[kind]]!r} and {owner!r} both register the "
                    f"default {label}; disable one (OPDPLUG_PLUGINS selects which entry points load)"
                )
            self.components[kind][name] = obj
            self.owners[kind][name] = owner
            if default:
                self.defaults[kind] = name
            info = self.manager.infos.get(owner)
            if info is not None:
                info.provides.setdefault(kind, []).append(name)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self.components.get(kind, {}))

    def resolve(self, kind: str, name: str, key: str = "") -> str:
        """``name``, or the kind's default when ``name`` is empty (a one-line error if none)."""
        if name:
            return name
        if kind in self.defaults:
            return self.defaults[kind]
        allowed = ", ".join(self.names(kind)) or f"none registered: is the plugin that provides {kind} installed and enabled?"
        raise ConfigError(f"{key or kind} is not set and no loaded plugin provides a default {kind_label(self.manager, kind)}; "
                          f"choose one ({allowed}){self._skipped_note()}")

    def _skipped_note(self) -> str:
        skipped = sorted(set(self.manager.skipped))
        return f"; installed but not loaded ({ENV_ONLY}): {', '.join(skipped)}" if skipped else ""

    def get(self, kind: str, name: str, key: str = "") -> Any:
        """The component ``name`` of ``kind`` (its default if ``name`` is empty); unknown names
        are one-line errors naming ``key``."""
        name = self.resolve(kind, name, key)
        try:
            return self.components[kind][name]
        except KeyError:
            pass
        label = kind_label(self.manager, kind)
        where = f"{key} = {name!r}: " if key else ""
        if kind not in self.components:
            raise ConfigError(f"{where}no loaded plugin provides {kind}; is the plugin that declares them installed and enabled?")
        allowed = ", ".join(self.names(kind)) or "(none registered)"
        msg = f"{where}unknown {label} {name!r}; allowed: {allowed}"
        failed = self.manager.failed
        if failed:
            msg += "; note: " + "; ".join(f"plugin {f.name!r} failed to load ({f.error})" for f in failed)
        raise ConfigError(msg + self._skipped_note())

    def build(self, kind: str, name: str, options: dict, key: str) -> Any:
        """Instantiate component ``name`` with ``options`` validated against its dataclass fields."""
        from .config import from_dict

        name = self.resolve(kind, name, key)
        cls = self.get(kind, name, key)
        if dataclasses.is_dataclass(cls) and isinstance(cls, type):
            return from_dict(cls, options or {}, f"[{key} options of {name!r}]")
        if options:
            raise ConfigError(f"{key} = {name!r} takes no options, got {sorted(options)}")
        return cls
