"""REST resources of the clients app: sites, datasets, and agent dataset registration."""
