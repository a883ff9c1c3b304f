"""host-local IPAM (importable as `plugins.host_local`; the folder name is mapped in pyproject).

Keeps the reference plugin's on-disk format, so a node can switch either way without losing
leases (see store.py). Where it differs from the reference (containernetworking/plugins 1.1.1),
on purpose:

- a repeated ADD by the same (container ID, ifname) returns the addresses it already holds;
  the reference refuses it as a duplicate allocation;
- a failed ADD leaves the leases and `last_reserved_ip.N` as it found them, and requested
  addresses are checked before anything is reserved;
- a gateway outside its subnet (or on its network/broadcast address), rangeStart after rangeEnd,
  a range with nothing to hand out, and single-range keys without `subnet` are config errors;
- the network and broadcast addresses are never handed out, even inside an explicit range;
- `CNI_ARGS` `IP=` takes several comma-separated addresses; unknown CNI_ARGS keys are ignored;
- DEL needs only the network name and dataDir, so it succeeds after the ranges became invalid; with a
  prevResult reporting one held address per range set it reads those leases alone, without listing
  the directory (the reference lists it on every DEL);
- an index of the leases, `podplumb-leases` in the lease directory, spares ADD, DEL and CHECK the
  reading of every lease file (the reference reads them all); it is used only while the directory
  is as it was when the index was written (store.py, lease_index.py);
- CHECK also compares the leases with prevResult, and creates nothing;
- STATUS and GC exist; errors carry specific codes (7, 101, 102, 105, 50, 5) instead of 999.
"""
