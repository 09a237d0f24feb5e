"""The plugin host: loads the plugins a configuration names (entry points in the ``tunvpn``
group, built-in ones included) and calls their hooks (:mod:`tunvpn.plugins.hookspecs`) without
stalling the event loop. The types plugins receive and return are in :mod:`tunvpn.plugins.types`.

``python -m tunvpn.plugins --markdown`` prints the hook reference (``docs/plugins.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import logging
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from tunvpn.plugins import hookspecs
from tunvpn.plugins.types import (
    Authorization,
    ClientProtocol,
    ClientQuestion,
    CredentialRequest,
    GatewayContext,
    ProtocolAnnouncement,
    SettingError,
    Verdict,
    combine_authorizations,
)

if TYPE_CHECKING:
    from tunvpn.ike.policies import ExtraProtocol

ENTRY_POINT_GROUP = "tunvpn"
hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)
"""Mark a function as a hook implementation: ``@hookimpl def tunvpn_verify_credentials(...)``."""


class PluginError(Exception):
    """A plugin cannot be loaded (not installed, broken entry point, unknown hook)."""


class PluginSettingsError(PluginError):
    """A plugin refused its settings (``tunvpn_check_settings`` raised)."""

    def __init__(self, plugin: str, error: SettingError) -> None:
        self.plugin = plugin
        self.error = error
        where = f"[plugin.{plugin}]" + (f" {error.key}" if error.key else "")
        shown = "" if error.value is ... else f"{error.value!r}: "
        self.reason = f"{shown}{error.message} (plugin {plugin!r})"
        """The message without the table and key (an error that names the key's line adds them)."""
        super().__init__(f"{where}{' = ' + shown[:-2] if shown else ''}: {error.message} (plugin {plugin!r})")


class PluginBusy(PluginError):
    """A blocking hook could not start: every worker of the plugin pool is busy."""


DEFAULT_WORKERS = 8
"""Worker threads of the plugin pool when the configuration says nothing (``plugin_workers``)."""

BACKLOG_PER_WORKER = 8
"""Calls that may wait for a worker, per worker of a plugin's pool (:class:`WorkerPool`)."""

WORKER_PREFIX = "tunvpn-plugin"
"""The name of every plugin worker thread starts with this (``threading.enumerate()``)."""


class WorkerPool:
    """The threads one plugin's blocking (plain function) hooks run in: at most ``size``
    daemon threads, started when needed (each plugin has its own pool, so a plugin stuck on
    a dead server cannot starve the others, the users file say). A call that finds every
    worker busy waits its turn, but only ``backlog`` calls may wait: beyond, a call is refused
    at once (:class:`PluginBusy`), so a plugin stuck on a dead server cannot pile up logins
    (a burst of logins checked against scrypt lines, ~90 ms each, waits instead of being
    refused: issue 14). A waiting call whose caller stopped waiting is skipped; a running
    one keeps its worker until the function returns, so a plugin's own timeout (RADIUS:
    ``timeout`` x ``(1 + retries)`` per server) bounds how long. The threads are daemons: a
    blocked call does not hold up the process's exit."""

    def __init__(self, size: int = DEFAULT_WORKERS, name: str = "", backlog: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"plugin pool size {size}: at least 1")
        self.size = size
        self.backlog = BACKLOG_PER_WORKER * size if backlog is None else backlog
        """Calls that may wait for a worker (beyond: refused)."""
        self.name = name
        self.refused = 0
        """Calls refused because every worker was busy."""
        self._jobs: queue.SimpleQueue[tuple[Callable[..., object], dict[str, object], Any] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def busy(self) -> int:
        """Calls running now (each holds one worker)."""
        return min(self._busy, self.size)

    @property
    def waiting(self) -> int:
        """Calls waiting for a worker."""
        return max(0, self._busy - self.size)

    def run(
        self, function: Callable[..., object], kwargs: dict[str, object], *, wait: bool = True
    ) -> asyncio.Future[object]:
        """Start ``function(**kwargs)`` on a worker; its result as a future of the running loop.
        Raises :class:`PluginBusy` when every worker is busy and the call may not wait
        (``wait`` false, or ``backlog`` calls wait already), or the pool is closed."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed or self._busy >= self.size + (self.backlog if wait else 0):
                self.refused += 1
                raise PluginBusy(
                    f"all {self.size} workers of plugin {self.name!r} are busy"
                    if not self._closed
                    else "the plugin pool is closed"
                )
            self._busy += 1  # running or waiting
            if len(self._threads) < min(self._busy, self.size):
                thread = threading.Thread(
                    target=self._work,
                    name=f"{WORKER_PREFIX}-{self.name}-{len(self._threads) + 1}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
        future: asyncio.Future[object] = loop.create_future()
        self._jobs.put((function, kwargs, (loop, future)))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, kwargs, (loop, future) = job
            outcome: tuple[object, BaseException | None]
            if future.done():  # its caller stopped waiting while it queued: not run at all
                with self._lock:
                    self._busy -= 1
                continue
            try:
                outcome = (function(**kwargs), None)
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome = (None, exc)
            finally:
                with self._lock:
                    self._busy -= 1
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def close(self) -> None:
        """Refuse new calls and let idle workers end (busy ones end when their call returns)."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        for _ in range(threads):
            self._jobs.put(None)


def _settle(future: asyncio.Future[object], outcome: tuple[object, BaseException | None]) -> None:
    if future.done():  # the caller stopped waiting (timeout, shutdown)
        return
    result, exc = outcome
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class InstalledPlugin:
    """An entry point of the ``tunvpn`` group."""

    name: str
    module: str
    distribution: str
    version: str


def installed_plugins() -> list[InstalledPlugin]:
    """Every plugin installed in this Python environment, by name."""
    found: dict[str, InstalledPlugin] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.setdefault(
            ep.name,
            InstalledPlugin(
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
            ),
        )
    return sorted(found.values(), key=lambda p: p.name)


OWN_PLUGINS: dict[str, str] = {"l2tp": "tunvpn-l2tp", "otp": "tunvpn-otp", "radius": "tunvpn-radius"}
"""The tunvpn project's own plugins (entry point name -> distribution): the only names a message
suggests a ``pip install`` for. Other names may come from a gateway (the protocols it
announces): printing ``pip install tunvpn-NAME`` for them would let a gateway choose a package
for the user to install."""


def install_advice(name: str, where: str = "plugins") -> str:
    """What to tell a user about a plugin ``name`` that is not loaded: ``pip install`` only for
    :data:`OWN_PLUGINS`, the name escaped (it may be a gateway's choice)."""
    from tunvpn.untrusted import quoted

    distribution = OWN_PLUGINS.get(name)
    if distribution is None:
        return (
            f"{quoted(name)} is not supported (not one of tunvpn's own plugins; the gateway's "
            "administrator knows which plugin provides it)"
        )
    return f"install the {distribution} plugin (pip install {distribution}) and name it in {where}"


def _entry_point(name: str) -> importlib.metadata.EntryPoint:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep
    from tunvpn.untrusted import quoted

    installed = ", ".join(p.name for p in installed_plugins()) or "none"
    known = OWN_PLUGINS.get(name)
    hint = f"pip install {known}" if known else "install the distribution that provides it"
    raise PluginError(f"plugin {quoted(name)} is not installed ({hint}); installed: {installed}")


# --------------------------------------------------------------------------- the host


class PluginHost:
    """The plugins of one gateway or client: a small typed facade over pluggy.

    :param names: entry point names to load, in order (later ones are asked first).
    :param objects: already imported plugins (modules or objects), e.g. in tests, named by
        their ``__name__`` (a module's dotted name; a class name for an instance), or
        ``(name, plugin)`` pairs to give the name (its ``[plugin.NAME]`` settings).
    :param workers: the size of each plugin's pool its blocking hooks run in
        (:class:`WorkerPool`).
    """

    def __init__(
        self, names: Sequence[str] = (), objects: Sequence[object] = (), *, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.workers = workers
        self.pools: dict[str, WorkerPool] = {}
        """Plugin name -> the pool its blocking hooks run in (made at the first call)."""
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.names: list[str] = []
        for name in names:
            ep = _entry_point(name)
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {name!r} ({ep.value}) failed to import: {exc}") from exc
            self._register(plugin, name)
        for obj in objects:
            if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
                self._register(obj[1], obj[0])  # (name, plugin): named as in a configuration
            else:
                self._register(obj, getattr(obj, "__name__", type(obj).__name__))

    def _register(self, plugin: object, name: str) -> None:
        if name in self.names:
            raise PluginError(f"plugin {name!r} is loaded twice")
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r}: {exc}") from exc
        self.names.append(name)

    def __repr__(self) -> str:
        return f"PluginHost({self.names})"

    def pool(self, name: str) -> WorkerPool:
        """The worker pool of plugin ``name``."""
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = WorkerPool(self.workers, name)
        return pool

    def close(self) -> None:
        """Refuse further blocking calls; idle workers end (busy ones when their call returns)."""
        for pool in self.pools.values():
            pool.close()

    def implements(self, hook: str) -> bool:
        return bool(getattr(self._pm.hook, hook).get_hookimpls())

    def serves(self, name: str) -> bool:
        """A loaded plugin of this name decides credentials (it can run as an extra protocol)."""
        return any(
            impl.plugin_name == name for impl in self._pm.hook.tunvpn_verify_credentials.get_hookimpls()
        )

    async def verify_credentials(
        self, request: CredentialRequest, context: GatewayContext, *, skip: Iterable[str] = ()
    ) -> Verdict:
        """Ask the plugins in turn (a plugin returning None passes); none: rejected. For an
        extra protocol (``request.protocol``) only the plugin of that name is asked; ``skip``
        names plugins not to ask for the login (those that run as extra protocols).

        A blocking plugin that cannot start because every worker is busy is passed over for
        this login (logged): the plugins after it still decide their users (the users file);
        if none decides, :class:`PluginBusy` is raised (the gateway refuses the login as
        "busy", not as a wrong password)."""
        skipped = set(skip)
        busy: PluginBusy | None = None
        asked = [
            impl
            for impl in self._ordered("tunvpn_verify_credentials")
            if impl.plugin_name == request.protocol
            or (request.protocol is None and impl.plugin_name not in skipped)
        ]
        for n, impl in enumerate(asked):
            # a busy plugin with others after it is passed over at once (they may decide);
            # the last one asked waits its turn, within its pool's backlog (issue 14)
            try:
                result = await _call(
                    impl, self.pool(impl.plugin_name), n == len(asked) - 1, request=request, context=context
                )
            except PluginBusy as exc:
                logging.getLogger("tunvpn.plugins").warning(
                    "plugin %r not asked about %r: %s", impl.plugin_name, request.user, exc
                )
                busy = exc
                continue
            if result is None:
                continue
            if not isinstance(result, Verdict):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_verify_credentials (expected a Verdict or None)"
                )
            return result
        if busy is not None:
            raise busy
        return Verdict.reject()

    async def client_answer(self, question: ClientQuestion) -> str | None:
        """Ask the plugins in turn for an answer; ``None``: none had one (prompt the user)."""
        for impl in self._ordered("tunvpn_client_answer"):
            result = await _call(impl, self.pool(impl.plugin_name), question=question)
            if result is None:
                continue
            if not isinstance(result, str):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_client_answer (expected a str or None)"
                )
            return result
        return None

    def announce(self, protocol: ExtraProtocol, context: GatewayContext) -> ProtocolAnnouncement | None:
        """``tunvpn_announce_protocol`` for one configured protocol, asking only the plugin of
        that name (configuration time: a coroutine is not allowed here)."""
        for impl in self._ordered("tunvpn_announce_protocol"):
            if impl.plugin_name != protocol.name:
                continue
            result = _call_now(impl, protocol=protocol, context=context)
            if result is None:
                continue
            if not isinstance(result, ProtocolAnnouncement):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_announce_protocol (expected a ProtocolAnnouncement or None)"
                )
            return result
        return None

    def serve(self, context: GatewayContext) -> list[asyncio.Task[None]]:
        """Start every ``tunvpn_serve`` coroutine as a task (on the running loop). A task that
        ends by raising is logged once; the gateway goes on without it."""
        tasks = []
        for impl in self._ordered("tunvpn_serve"):
            if not inspect.iscoroutinefunction(impl.function):
                raise PluginError(f"plugin {impl.plugin_name!r}: tunvpn_serve must be an async def")
            coro = _call_now(impl, context=context)
            task = asyncio.get_running_loop().create_task(coro, name=f"{impl.plugin_name} service")
            task.add_done_callback(_service_done(impl.plugin_name))
            tasks.append(task)
        return tasks

    async def authorize(
        self, user: str, groups: frozenset[str], peer: tuple[str, int], context: GatewayContext
    ) -> Authorization | None:
        """Every plugin's ``tunvpn_authorize`` answer, merged (:func:`combine_authorizations`:
        union of groups and policies, the first address, any refusal wins: the plugins after a
        refusal are not asked); ``None`` when no plugin answered."""
        answers: list[tuple[str, Authorization]] = []
        for impl in self._ordered("tunvpn_authorize"):
            result = await _call(
                impl, self.pool(impl.plugin_name), user=user, groups=groups, peer=peer, context=context
            )
            if result is None:
                continue
            if not isinstance(result, Authorization):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_authorize (expected an Authorization or None)"
                )
            answers.append((impl.plugin_name, result))
            if result.deny is not None:
                break
        if not answers:
            return None
        merged, dropped = combine_authorizations(answers)
        for line in dropped:
            logging.getLogger("tunvpn.plugins").warning("authorizing user %r: %s", user, line)
        return merged

    def check_settings(
        self, settings: Mapping[str, Mapping[str, Any]], side: str, context: GatewayContext | None = None
    ) -> None:
        """``tunvpn_check_settings`` of every loaded plugin, each with its own table (empty if
        the configuration has none). Raises :class:`PluginSettingsError` for the first plugin
        that refuses (configuration time: a coroutine is not allowed here)."""
        for impl in self._ordered("tunvpn_check_settings"):
            own = dict(settings.get(impl.plugin_name, {}))
            try:
                result = _call_now(impl, settings=own, side=side, context=context)
            except SettingError as exc:
                raise PluginSettingsError(impl.plugin_name, exc) from exc
            except Exception as exc:  # a plugin's own ValueError, KeyError, ...
                raise PluginSettingsError(
                    impl.plugin_name, SettingError("", f"{type(exc).__name__}: {exc}")
                ) from exc
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: tunvpn_check_settings must not be an async def"
                )

    def declared_groups(
        self, settings: Mapping[str, Mapping[str, Any]], context: GatewayContext
    ) -> dict[str, str]:
        """``tunvpn_declare_groups`` of every plugin: group name -> the plugin that declared it
        first (by the order plugins are asked)."""
        out: dict[str, str] = {}
        for impl in self._ordered("tunvpn_declare_groups"):
            own = dict(settings.get(impl.plugin_name, {}))
            try:
                result = _call_now(impl, settings=own, context=context)
            except SettingError as exc:
                raise PluginSettingsError(impl.plugin_name, exc) from exc
            if result is None:
                continue
            if isinstance(result, str) or not isinstance(result, Iterable):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_declare_groups (expected names of groups, or None)"
                )
            for group in result:
                if not isinstance(group, str) or not group:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r}: tunvpn_declare_groups gave {group!r}, not a group name"
                    )
                out.setdefault(group, impl.plugin_name)
        return out

    def call_order(self, hook: str) -> list[str]:
        """The plugins implementing ``hook``, in the order they are asked (``tunvpn plugins -c``
        and ``tunvpn gateway --check`` show it)."""
        return [impl.plugin_name for impl in self._ordered(hook)]

    def _ordered(self, hook: str) -> list[pluggy.HookImpl]:
        """``hook``'s implementations in calling order: those marked ``tryfirst``, then the
        others, the last loaded first (so the last named in ``plugins``, and the built-in
        ``users-file`` last of all), then those marked ``trylast`` (pluggy's order)."""
        return list(reversed(getattr(self._pm.hook, hook).get_hookimpls()))

    async def client_protocol(
        self, protocol: ExtraProtocol, settings: dict[str, dict[str, Any]]
    ) -> ClientProtocol | None:
        """The plugin that handles an announced protocol on the client, or ``None``."""
        for impl in self._ordered("tunvpn_client_protocol"):
            result = await _call(impl, self.pool(impl.plugin_name), protocol=protocol, settings=settings)
            if result is None:
                continue
            if not isinstance(result, ClientProtocol):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_client_protocol (expected a ClientProtocol or None)"
                )
            return result
        return None

    def broadcast(self, hook: str, **kwargs: object) -> asyncio.Task[None] | None:
        """Call every implementation of the broadcast ``hook`` without waiting (call it on the
        event loop): each runs as :func:`_call` does (a plain function in a thread), one after
        the other in a task, what one raises is logged and the next still runs. The task (or
        None when no plugin implements the hook), for whoever wants to wait for it."""
        impls = self._ordered(hook)
        if not impls:
            return None

        async def run() -> None:
            for impl in impls:
                try:
                    await _call(impl, self.pool(impl.plugin_name), **kwargs)
                except Exception as exc:  # one plugin's failure is not the gateway's
                    logging.getLogger("tunvpn.plugins").error(
                        "plugin %r: %s failed: %s", impl.plugin_name, hook, exc
                    )

        return asyncio.get_running_loop().create_task(run(), name=f"{hook} broadcast")


def _service_done(name: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logging.getLogger("tunvpn.plugins").error("plugin %r: its service stopped: %s", name, exc)

    return done


def _call_now(impl: pluggy.HookImpl, /, **kwargs: object) -> Any:
    """One hook implementation called here and now (configuration-time hooks), with the
    arguments it names."""
    return impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})


async def _call(impl: pluggy.HookImpl, pool: WorkerPool, wait: bool = True, /, **kwargs: object) -> object:
    """One hook implementation: a coroutine function on the loop, anything else on a worker of
    ``pool`` (:class:`PluginBusy` when none is free and the call may not wait: ``wait``)."""
    wanted = {name: kwargs[name] for name in impl.argnames if name in kwargs}
    function = impl.function
    if inspect.iscoroutinefunction(function):
        return await function(**wanted)
    result = await pool.run(function, wanted, wait=wait)
    if inspect.isawaitable(result):
        result = await result
    return result


# --------------------------------------------------------------------------- reference


def hook_reference() -> str:
    """``docs/plugins.md``'s hook reference: how hooks are called, and a table of every hook
    linking to its page (:func:`hook_page`, ``docs/hooks/NAME.md``)."""
    parts = [
        "<!-- generated by `python -m tunvpn.plugins --markdown` from tunvpn/plugins/hookspecs.py -->",
        "## Hook reference",
        "",
        _markdown(hookspecs.__doc__ or ""),
        "",
        "Each hook has a page: its arguments, what it returns, and a small complete plugin that",
        "uses it (`tunvpn/plugins/examples/`, each tested by `tests/unit/plugins/test_hook_examples.py`).",
        "",
        "| hook | answers | what it is for |",
        "| --- | --- | --- |",
    ]
    for name in hookspecs.hook_names():
        summary = _summary(getattr(hookspecs, name).__doc__ or "")
        parts.append(f"| [`{name}`](hooks/{name}.md) | {hookspecs.HOW_CALLED[name]} | {summary} |")
    return "\n".join(parts) + "\n"


def _summary(doc: str) -> str:
    """A docstring's first paragraph, without its closing "(first result wins)"-style remark."""
    first = " ".join(_markdown(doc).split("\n\n")[0].split())
    return re.sub(r"\s*\([^()]*\)\.?$", "", first).rstrip(".")


def _markdown(doc: str) -> str:
    """A hook docstring as Markdown: reST roles and double backquotes become code spans, and
    the ``:param NAME:`` / ``:return:`` fields a list."""
    text = inspect.cleandoc(doc)
    text = re.sub(r":(?:class|func|meth|data|mod|attr):`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    out: list[str] = []
    literal: list[str] | None = None  # the lines of a "::" block, while in one
    for line in [*text.splitlines(), ""]:
        if literal is not None:
            if not line.strip() or line.startswith("    "):
                literal.append(line[4:])
                continue
            body = "\n".join(literal).strip("\n")
            out += ["```", body, "```", ""]
            literal = None
        field = re.match(r":param (\w+):\s*(.*)|:return:\s*(.*)", line)
        if line.endswith("::"):
            out += [line[:-1], ""]
            literal = []
        elif field and field.group(1):
            if out and out[-1] and not out[-1].startswith(("- ", "  ")):
                out.append("")
            out.append(f"- **`{field.group(1)}`**: {field.group(2)}")
        elif field:
            out.append(f"- **returns**: {field.group(3)}")
        elif out and out[-1].startswith(("- ", "  ")) and line.startswith("    "):
            out.append("  " + line.strip())
        else:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


def hook_page(name: str) -> str:
    """``docs/hooks/NAME.md``: one hook's reference (its docstring) and its tested example."""
    from importlib import resources

    from tunvpn.plugins.examples import EXAMPLES

    spec = getattr(hookspecs, name)
    args = ", ".join(inspect.signature(spec).parameters)
    example = EXAMPLES[name]
    code = resources.files("tunvpn.plugins.examples").joinpath(example).read_text(encoding="utf-8")
    return "\n".join(
        [
            "<!-- generated by `python -m tunvpn.plugins --pages docs/hooks` from "
            "tunvpn/plugins/hookspecs.py and tunvpn/plugins/examples/ -->",
            f"# `{name}({args})`",
            "",
            f"*{hookspecs.HOW_CALLED[name]}* · [all hooks](../plugins.md#hook-reference)",
            "",
            _markdown(spec.__doc__ or ""),
            "",
            "## Example",
            "",
            f"`tunvpn/plugins/examples/{example}`, tested as it stands by",
            "`tests/unit/plugins/test_hook_examples.py`:",
            "",
            "```python",
            code.rstrip(),
            "```",
            "",
        ]
    )


def undocumented() -> list[str]:
    """Hooks without a docstring, or whose docstring lacks a ``:param NAME:`` per argument."""
    problems = []
    for name in hookspecs.hook_names():
        spec = getattr(hookspecs, name)
        doc = spec.__doc__ or ""
        if not doc.strip():
            problems.append(f"{name}: no docstring")
            continue
        for arg in inspect.signature(spec).parameters:
            if f":param {arg}:" not in doc:
                problems.append(f"{name}: argument {arg!r} is not documented")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunvpn.plugins")
    parser.add_argument("--markdown", action="store_true", help="print the hook reference")
    parser.add_argument("--pages", metavar="DIR", help="write one page per hook (NAME.md) into DIR")
    args = parser.parse_args(argv)
    if args.markdown:
        print(hook_reference(), end="")
        return 0
    if args.pages:
        from pathlib import Path

        for name in hookspecs.hook_names():
            (Path(args.pages) / f"{name}.md").write_text(hook_page(name), encoding="utf-8")
        return 0
    for plugin in installed_plugins():
        print(f"{plugin.name}\t{plugin.distribution} {plugin.version}\t{plugin.module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
