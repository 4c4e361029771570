"""etcd: the server launcher and the one datastore layer that talks to etcd."""
