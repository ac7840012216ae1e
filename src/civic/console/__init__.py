"""The operator console (``civic server console``): live status above, output in the middle, a
command line below. Commands run in-process through the same typer app as the ``civic`` command;
nothing here computes what the core does not already offer."""
