"""Network policy: Cilium's label-based policy on one host.

The model (pure, no kernel; tested without root):

* ``labels``   -- labels with a source (``k8s:app=web``, ``reserved:host``) and label sets
* ``identity`` -- numeric identities from label sets, Cilium's reserved ones, endpoints
* ``selector`` -- ``EndpointSelector`` (``matchLabels``/``matchExpressions``) as Cilium matches it
* ``policy``   -- CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML -> ``Policy`` objects,
  every problem collected with ``file:line:col``
* ``resolve``  -- endpoints + policies -> per-endpoint default-deny state and policy entries,
  and ``decide()``, the reference verdict the kernel datapath is tested against

The datapath (``datapath.py``) loads what ``resolve`` computes into BPF maps.
"""
