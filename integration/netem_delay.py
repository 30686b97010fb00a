#!/usr/bin/env python3
"""Holds every packet of one netfilter queue for a fixed delay, then accepts it.

The integration suite's stand-in for `tc qdisc ... netem delay`, which needs sch_netem
(not built into every kernel). The driver runs it inside a container's network
namespace (`nsenter -t <pid> -n`) next to an iptables rule
`-A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass`, so every packet the node
sends waits DELAY_MS before it leaves. Packets leave in the order they arrived.

Speaks nfnetlink_queue directly over an AF_NETLINK socket (Python standard library
only): bind the queue, ask for metadata only (no payload copies), then for each queued
packet send an NF_ACCEPT verdict once its delay has passed. Exits on SIGTERM/SIGINT
after accepting everything it still holds.

Usage: netem_delay.py QUEUE_NUM DELAY_MS
"""

import collections
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF
QUEUE_MAXLEN = 65536


def attr(kind, payload):
    """One netlink attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(msg_type, queue, attrs, flags=NLM_F_REQUEST):
    """nlmsghdr + nfgenmsg (AF_UNSPEC, version 0, resource id = queue) + attributes."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 0, 0) + body


def configure(sock, queue, attrs):
    """Sends one config message and raises if the kernel answers with an error."""
    sock.send(message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
    reply = sock.recv(65536)
    length, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (errno,) = struct.unpack_from("=i", reply, 16)
        if errno != 0:
            raise OSError(-errno, os.strerror(-errno))


def packet_ids(buf):
    """The packet ids of every NFQNL_MSG_PACKET message in one datagram."""
    ids = []
    offset = 0
    while offset + 16 <= len(buf):
        length, kind = struct.unpack_from("=IH", buf, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos = offset + 20  # nlmsghdr + nfgenmsg
            end = offset + length
            while pos + 4 <= end:
                nla_len, nla_type = struct.unpack_from("=HH", buf, pos)
                if nla_len < 4:
                    break
                if nla_type & NLA_TYPE_MASK == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", buf, pos + 4)[0])
                pos += (nla_len + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def accept(sock, queue, packet_id):
    verdict = attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    sock.send(message(NFQNL_MSG_VERDICT, queue, [verdict]))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: netem_delay.py QUEUE_NUM DELAY_MS")
    queue, delay = int(sys.argv[1]), int(sys.argv[2]) / 1000.0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    configure(sock, queue, [attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, 0))])
    configure(sock, queue, [attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))])
    configure(sock, queue, [attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))])
    sock.setblocking(False)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    print(f"netem_delay: queue {queue} bound, delaying {delay * 1000:.0f} ms", flush=True)

    held = collections.deque()  # (release time, packet id), in arrival order
    delayed = 0
    while not stopping:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
        except InterruptedError:
            continue
        if readable:
            while True:
                try:
                    buf = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as e:  # ENOBUFS: the kernel dropped notifications
                    print(f"netem_delay: recv: {e}", file=sys.stderr, flush=True)
                    break
                due = time.monotonic() + delay
                held.extend((due, pid) for pid in packet_ids(buf))
        now = time.monotonic()
        while held and held[0][0] <= now:
            accept(sock, queue, held.popleft()[1])
            delayed += 1
    while held:
        accept(sock, queue, held.popleft()[1])
    try:
        sock.setblocking(True)
        configure(sock, queue, [attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_UNBIND, 0, 0))])
    except OSError:
        pass
    print(f"netem_delay: released, {delayed} packets delayed", flush=True)


if __name__ == "__main__":
    main()
