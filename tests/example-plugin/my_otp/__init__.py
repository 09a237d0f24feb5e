"""The example plugin of docs/plugins.md, copied from it (tests/test_docs_example_plugin.py)."""
