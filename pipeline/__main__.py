"""`python -m pipeline`: the command line of `pipeline.cli`, with the engine the top-level `cli` module builds."""

if __name__ == "__main__":
    from cli import main

    raise SystemExit(main())
