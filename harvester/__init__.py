"""harvester: an async batch statistics harvester for the Flipsnack API."""
