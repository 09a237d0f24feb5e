"""What the gateway checks once its plugins are loaded (issue 22), at start, on reload and in
``tunvpn gateway --check`` / ``tunvpn plugins -c``:

* every plugin's own settings (``tunvpn_check_settings``);
* the group names that ``[[policy]]``, ``[[peering]]`` and ``[[site]]`` use: each must be in
  ``[groups]`` or declared by a loaded plugin (``tunvpn_declare_groups``);
* the address pools against the protected networks (as gateway.toml's own check does, so
  options built in code, ``tunvpn.testing``, are held to the same rules).

An error names the file, line and key when the options came from gateway.toml.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tunvpn.config.errors import ConfigError
from tunvpn.config.gateway import ConfigFileError, pool_overlap, undefined_group
from tunvpn.plugins.host import PluginSettingsError

if TYPE_CHECKING:
    from tunvpn.gateway.daemon import GatewayOptions
    from tunvpn.plugins.host import PluginHost
    from tunvpn.plugins.types import GatewayContext


def check_plugin_setup(options: GatewayOptions, host: PluginHost, context: GatewayContext) -> dict[str, str]:
    """Run the checks above; the groups plugins declared (group -> plugin). Raises
    :class:`ConfigError` (a :class:`ConfigFileError` with the line when there is a file)."""
    settings = options.plugin_settings
    try:
        host.check_settings(settings, "gateway", context)
        declared = host.declared_groups(settings, context)
    except PluginSettingsError as exc:
        key = f"plugin.{exc.plugin}" + (f".{exc.error.key}" if exc.error.key else "")
        if options.config_source is None:
            raise ConfigError(str(exc)) from None
        raise located(options, key, exc.reason) from None
    check_group_names(options, declared)
    check_pools(options)
    return declared


def located(options: GatewayOptions, key: str, reason: str) -> ConfigError:
    """The error of ``key``, with the file and line when the options came from one."""
    source = options.config_source
    if source is None:
        return ConfigError(f"{key}: {reason}" if key else reason)
    return ConfigFileError(source.path, source.line_of(key), key, reason)


def check_group_names(options: GatewayOptions, declared: Mapping[str, str]) -> None:
    """Every group a rule names is defined in ``[groups]`` or declared by a plugin."""

    def check(key: str, names: Iterable[str]) -> None:
        for group in names:
            if group != "*" and (reason := undefined_group(group, options.groups, declared)) is not None:
                raise located(options, key, reason)

    for index, rule in enumerate(options.rules):
        check(f"policy[{index}].groups", rule.groups)
    for index, peering in enumerate(options.peering):
        check(f"peering[{index}].from", peering.from_groups)
        check(f"peering[{index}].to", peering.to_groups)
    for index, site in enumerate(options.sites):
        check(f"site[{index}].introduce", site.introduce)


def check_pools(options: GatewayOptions) -> None:
    """No protected network of a rule overlaps an address pool of its family (gateway.toml's
    own check, :func:`tunvpn.config.gateway.pool_overlap`)."""
    overlap = pool_overlap(options.pool, options.pool6, [rule.policy for rule in options.rules])
    if overlap is not None:
        key, _, reason = overlap
        raise located(options, key, reason)
