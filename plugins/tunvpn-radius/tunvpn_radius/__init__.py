"""tunvpn-radius: the gateway decides XAUTH through RADIUS servers and reports sessions to
them (RADIUS accounting). The plugin is :mod:`tunvpn_radius.plugin`; the RADIUS client it
uses is :mod:`tunvpn_radius.client`."""

__version__ = "0.1.0"
