"""Cluster: documents placed across nodes (etcd ownership, Litestream replication, forwarding). See docs/cluster.md."""
