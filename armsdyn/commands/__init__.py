"""The subcommands of the ``armsdyn`` command line, one module each.

Each module turns the parsed arguments (:class:`argparse.Namespace`) of its subcommand into
library calls and prints what they return; :mod:`armsdyn.cli` parses the arguments and
imports a subcommand's module only when that subcommand runs (its ``COMMANDS`` registry), so
``armsdyn --help`` and a config check do not pay for the modules of the others.
"""
