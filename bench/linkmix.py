"""Splits the frames of a capture on a lab site's WAN link (bench/linkmix.sh)
into chunk bytes, per-frame headers and control, against the release.

Usage: python3 bench/linkmix.py RUN.json SITE0.pcap
"""
import json
import struct
import sys

# Site 0's LAN (testnet/src/netns.rs: site s is 10.(s+1).0.0/24).
SITE = bytes([10, 1, 0])
# Frames this short carry no chunk data: acknowledgements, requests, pings.
SMALL = 200


def frames(path, window):
    """(frame length, IPv4 header bytes) of every IPv4 frame in a pcap
    captured within `window` (seconds since the Unix epoch)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        sys.exit(f"linkmix: cannot read the capture {path}: {e}")
    with f:
        head = f.read(24)
        if len(head) < 24:
            sys.exit(f"linkmix: {path} is not a pcap file")
        magic = struct.unpack("<I", head[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"linkmix: {path} is not a little-endian pcap file")
        fraction = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            secs, part, caught, length = struct.unpack("<IIII", rec)
            data = f.read(caught)
            inside = window[0] <= secs + part * fraction <= window[1]
            if inside and data[12:14] == b"\x08\x00" and len(data) >= 34:
                yield length, data[14:]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    try:
        run = json.load(open(sys.argv[1]))
    except (OSError, ValueError) as e:
        sys.exit(f"linkmix: cannot read the run report {sys.argv[1]}: {e}")
    if not run.get("links"):
        sys.exit(f"linkmix: {sys.argv[1]} has no link counters (not a --netns run)")
    if "window_unix_secs" not in run["links"]:
        sys.exit(f"linkmix: {sys.argv[1]} has no links.window_unix_secs (a report older than the capture window; run again)")
    release = run["wire_bytes"]
    chunk_in = run["site_wan_ratio"][0][1] * release
    tally = {d: {"frames": 0, "bytes": 0, "headers": 0, "small": 0, "small_frames": 0}
             for d in ("in", "out")}
    counted = run["links"]["site_wan"][0]
    for length, ip in frames(sys.argv[2], run["links"]["window_unix_secs"]):
        into, outof = ip[16:19] == SITE, ip[12:15] == SITE
        if into == outof:
            continue
        t = tally["in" if into else "out"]
        t["frames"] += 1
        t["bytes"] += length
        if length <= SMALL:
            t["small"] += length
            t["small_frames"] += 1
        else:
            # Ethernet, IP and the UDP (8) or TCP (data offset) header.
            ihl = (ip[0] & 0x0F) * 4
            l4 = 8 if ip[9] == 17 else ((ip[ihl + 12] >> 4) * 4 if len(ip) > ihl + 12 else 20)
            t["headers"] += 14 + ihl + l4
    r = lambda b: f"{b / release:.4f}"
    i, o = tally["in"], tally["out"]
    rest = i["bytes"] - i["small"] - i["headers"] - chunk_in
    big = i["frames"] - i["small_frames"]
    print(f"release (as stored)                       {release} bytes")
    print("from the counters' reading before publish to the one at completion:")
    print(f"into site 0, all frames                   {r(i['bytes'])}  "
          f"(interface counters: {counted['in_ratio']:.4f}; {i['frames']} frames)")
    print(f"  chunk bytes                             {r(chunk_in)}")
    print(f"  Ethernet/IP/UDP headers, larger frames  {r(i['headers'])}  ({big} frames)")
    print(f"  rest of the larger frames               {r(rest)}  "
          f"(QUIC headers and tags, stream framing, manifest, hellos, have-maps: "
          f"{rest / max(big, 1):.0f} bytes a frame)")
    print(f"  frames <= {SMALL} bytes                     {r(i['small'])}  "
          f"({i['small_frames']} frames: acknowledgements and control)")
    print(f"out of site 0, all frames                 {r(o['bytes'])}  "
          f"(interface counters: {counted['out_ratio']:.4f}; {o['frames']} frames)")
    print(f"  frames <= {SMALL} bytes                     {r(o['small'])}  "
          f"({o['small_frames']} frames)")
    print(f"completion / T_min                        {run['completion_over_t_min']:.4f}")


if __name__ == "__main__":
    main()
