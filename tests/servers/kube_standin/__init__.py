"""Private parts of the Kubernetes API stand-in; the public facade is ``tests.servers.kube_api``.

- ``errors``: ``Status`` bodies for failures, in the API's exact shapes.
- ``resources``: the served resource types, discovery documents, label selectors.
- ``patches``: merge, strategic-merge and JSON patches; server-side apply field sets.
- ``store``: objects, resourceVersions, defaults, validation, watch events.
- ``controllers``: the simulated clock, kubelet, ReplicaSet, Deployment, Endpoints
  and garbage collector.
- ``server``: the HTTP layer (routing, auth, watch streams).
"""
