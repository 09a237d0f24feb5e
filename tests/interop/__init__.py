"""Helpers and tests that drive real IKEv1 peers (strongSwan charon, vpnc) in namespaces."""
