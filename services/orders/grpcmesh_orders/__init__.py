"""Orders reference service: an event-sourced order saga over catalog, inventory, payments."""
