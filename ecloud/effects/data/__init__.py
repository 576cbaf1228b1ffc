"""Moving task data to and from the datastore (local, rsync over ssh)."""
