"""host-local IPAM (importable as `plugins.host_local`; the folder name is mapped in pyproject).

Keeps the reference plugin's on-disk format, so a node can switch either way without losing
leases (see store.py). Where it differs from the reference (containernetworking/plugins 1.1.1),
on purpose:

- a repeated ADD by the same (container ID, ifname) returns the addresses it already holds;
  the reference refuses it as a duplicate allocation;
- a failed ADD leaves the lease directory as it found it, `last_reserved_ip.N` included, and
  requested addresses are checked before anything is reserved;
- a gateway outside its subnet (or on its network/broadcast address), rangeStart after rangeEnd,
  a range with nothing to hand out, and single-range keys without `subnet` are config errors;
- the network and broadcast addresses are never handed out, even inside an explicit range;
- `CNI_ARGS` `IP=` takes several comma-separated addresses; unknown CNI_ARGS keys are ignored;
- DEL needs only the network name and dataDir, so it succeeds after the ranges became invalid; with a
  prevResult reporting one held address per range set it reads those leases alone, without listing
  the directory (the reference lists it on every DEL);
- CHECK also compares the leases with prevResult, and creates nothing;
- STATUS and GC exist; errors carry specific codes (7, 101, 102, 105, 50, 5) instead of 999.
"""
