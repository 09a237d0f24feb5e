"""The plugin API: the one module a tunvpn plugin imports (docs/plugins.md, "The plugin API").

What is here stays importable under these names; everything else in ``tunvpn`` is internal
and may move. The package holds the hooks (:mod:`.hookspecs`, the reference), their types
(:mod:`.types`, :mod:`.accounting`), the host that loads and calls plugins (:mod:`.host`) and
the built-in ``users-file`` plugin (:mod:`.users_file`, a plugin like any other).

* Hooks: :data:`hookimpl` marks an implementation; the types hooks receive and return:
  :class:`CredentialRequest`, :class:`Verdict`, :class:`GatewayContext`,
  :class:`Authorization`, :class:`AccountingRecord`, :class:`ClientQuestion`,
  :class:`ProtocolAnnouncement`, :class:`ClientProtocol`, :class:`ClientSession`;
  :class:`SettingError` (raised by ``tunvpn_check_settings``) and
  :func:`combine_authorizations` (how ``tunvpn_authorize`` answers merge).
* Policies and identities a protocol plugin builds: :class:`Phase2Policy`,
  :class:`ExtraProtocol`, :class:`TrafficSelector`, :class:`DHGroup`.
* Secret files: :func:`read_private_file` (private to us, no symbolic link),
  :func:`parse_secret` (quoted or ``0x`` hex), :class:`SecretFileError`.
* Data path, for a plugin with its own TUN device (L2TP/PPP): :func:`open_tun`,
  :class:`PacketDevice`, :func:`off_loop` (blocking netlink calls from a coroutine),
  :class:`AddressPool` (client addresses, as the gateway's ``pool``).
* The host, for tools and tests: :class:`PluginHost`, :func:`installed_plugins`,
  :class:`PluginError`, :func:`install_advice`. Tests of a plugin use :mod:`tunvpn.testing`.
"""

from tunvpn.config.credentials import SecretFileError, parse_secret, read_private_file
from tunvpn.config.pool import AddressPool
from tunvpn.dataplane import PacketDevice, off_loop, open_tun
from tunvpn.ike.constants import DHGroup
from tunvpn.ike.policies import ExtraProtocol, Phase2Policy
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.plugins.accounting import AccountingRecord
from tunvpn.plugins.host import (
    ENTRY_POINT_GROUP,
    OWN_PLUGINS,
    InstalledPlugin,
    PluginError,
    PluginHost,
    PluginSettingsError,
    hook_reference,
    hookimpl,
    install_advice,
    installed_plugins,
    undocumented,
)
from tunvpn.plugins.types import (
    XAUTH_FIELDS,
    Authorization,
    ClientProtocol,
    ClientQuestion,
    ClientSession,
    CredentialRequest,
    GatewayContext,
    ProtocolAnnouncement,
    SettingError,
    Verdict,
    combine_authorizations,
)

__all__ = [
    # hooks and their types
    "hookimpl",
    "CredentialRequest",
    "Verdict",
    "GatewayContext",
    "Authorization",
    "AccountingRecord",
    "ClientQuestion",
    "ProtocolAnnouncement",
    "ClientProtocol",
    "ClientSession",
    "SettingError",
    "combine_authorizations",
    "XAUTH_FIELDS",
    # policies and identities
    "Phase2Policy",
    "ExtraProtocol",
    "TrafficSelector",
    "DHGroup",
    # secret files
    "read_private_file",
    "parse_secret",
    "SecretFileError",
    # data path
    "open_tun",
    "PacketDevice",
    "off_loop",
    "AddressPool",
    # the host
    "ENTRY_POINT_GROUP",
    "OWN_PLUGINS",
    "InstalledPlugin",
    "PluginError",
    "PluginHost",
    "PluginSettingsError",
    "hook_reference",
    "install_advice",
    "installed_plugins",
    "undocumented",
]
