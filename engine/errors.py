"""The error a user can fix: scripts print it as one `error:` line and exit 2 (engine/cli.py run_cli)."""


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""
