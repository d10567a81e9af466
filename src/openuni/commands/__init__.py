"""One module per `openuni` subcommand: argument parsing and I/O; the work itself lives in the library."""
