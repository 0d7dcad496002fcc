"""``distro-kernels profile``: kernel timings per device, against the roofline and the eager path.

For each device (CPU, every visible GPU), each op (fused encode, compress, decode of P peers
with and without sign, sign packing, payload encode and parse) and each backend that runs
there, it times several runs (CUDA events with an L2 flush on GPUs; rotating buffers larger
than the last-level cache on CPUs), reports the bytes the op must move, GB/s, that as a
fraction of the copy bandwidth measured in the same run, and the ratio to the eager
DeMo-style pipeline (:mod:`distro_kernels.baseline`) timed in the same run on the same device.

Modules: ``cli`` (arguments), ``run`` (one device's profile), ``layouts``, ``timing``,
``roofline``, ``device`` (device key, versions), ``ops`` (what is timed), ``report``,
``compare``, ``progress``, ``tuning`` (the per-device settings cache backends read) and
``tune`` (the search that fills it). Nothing here is imported by the data path.
"""

SCHEMA = "distro_kernels.profile/1"
