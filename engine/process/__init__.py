"""The engine process: its sockets, heartbeat and start-up."""
