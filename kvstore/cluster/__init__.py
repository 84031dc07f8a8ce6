"""The pod: placement (shared with the SDK, defined in ``kvstore_wire.placement``), membership
(``membership``: the view of live nodes, static or from etcd) and the etcd source (``etcd``)."""
