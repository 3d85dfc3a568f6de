class PipelineError(Exception):
    """A problem the user can fix (bad path, no network, bad option); printed as one line, no traceback."""
