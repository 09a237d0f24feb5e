"""One small, complete plugin per hook: the example of each hook's page in the documentation
(``docs/hooks/``), and each tested as it stands (``tests/unit/plugins/test_hook_examples.py``).
They import only the plugin API (:mod:`tunvpn.plugins`), as a real plugin must. The file of a
hook is :data:`EXAMPLES`'s entry."""

EXAMPLES: dict[str, str] = {
    "tunvpn_verify_credentials": "service_accounts.py",
    "tunvpn_authorize": "office_hours.py",
    "tunvpn_check_settings": "office_hours.py",
    "tunvpn_declare_groups": "office_hours.py",
    "tunvpn_add_commands": "hello_command.py",
    "tunvpn_accounting": "session_log.py",
    "tunvpn_accounting_onoff": "session_log.py",
    "tunvpn_client_answer": "passcode_file.py",
    "tunvpn_announce_protocol": "notice.py",
    "tunvpn_serve": "notice.py",
    "tunvpn_client_protocol": "notice_client.py",
}
"""Hook name -> the example module (in this package) that implements it."""
