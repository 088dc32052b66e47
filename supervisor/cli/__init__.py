"""The ``supervisor`` command line: parsing, printing and one module per command family.

Nothing here runs inside the supervisor's event loop except through ``start_command``,
which hands over to ``supervisor.runtime``.
"""
