"""The example plugin of docs/plugins.md, copied from it (tests/unit/plugins/test_docs_example_plugin.py)."""
