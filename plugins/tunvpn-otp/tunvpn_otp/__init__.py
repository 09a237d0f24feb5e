"""tunvpn-otp: PIN + tokencode (TOTP, HOTP) for the tunvpn gateway's XAUTH.

``core`` decides (no I/O, the time is passed in), ``store`` keeps the secrets file, ``plugin``
joins them to the gateway's ``tunvpn_verify_credentials`` hook and adds ``tunvpn otp``.
"""
