"""tunvpn's plugins: the hooks (:mod:`.hookspecs`, the reference), the host that loads and calls
them (:mod:`.host`), the built-in ``users-file`` plugin (:mod:`.users_file`) and the records
plugins receive (:mod:`.accounting`).

``tunvpn.plugins`` itself is what a plugin imports: the ``hookimpl`` marker and the types its
hooks receive and return.
"""

from tunvpn.plugins.host import (
    ENTRY_POINT_GROUP,
    OWN_PLUGINS,
    InstalledPlugin,
    PluginError,
    PluginHost,
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
    Verdict,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "OWN_PLUGINS",
    "XAUTH_FIELDS",
    "Authorization",
    "ClientProtocol",
    "ClientQuestion",
    "ClientSession",
    "CredentialRequest",
    "GatewayContext",
    "InstalledPlugin",
    "PluginError",
    "PluginHost",
    "ProtocolAnnouncement",
    "Verdict",
    "hook_reference",
    "hookimpl",
    "install_advice",
    "installed_plugins",
    "undocumented",
]
