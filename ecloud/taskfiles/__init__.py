"""Task files: parsing, their fields, the task graph, pushing them to the log."""
