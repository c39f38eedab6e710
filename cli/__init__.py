"""The command line: its verbs and the Olive importer."""
