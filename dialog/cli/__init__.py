"""The `repliq` command line: argument parsing only. Each module registers one command group and hands
its parsed flags to a job (`dialog.jobs`) or to the serving layer (`dialog.serving`)."""
