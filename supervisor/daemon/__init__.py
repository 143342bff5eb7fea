"""The daemon: composition root, dispatcher, catalog and loaders, scheduler, janitor, presence, shutdown, systemd."""
