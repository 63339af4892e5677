"""A ProLAN-501 radio receiver on a pseudo-terminal, for the Wine checks.

Speaks the binary protocol of shared/spec/prolan-serial.md: answers QUERY
with HELLO, sends a HEARTBEAT every 5 s, sends each remote press three
times (as the radio does), and records the ACKs the agent sends back after
it committed a press. The agent (under Wine) opens the slave through a COM
name mapped to it in the Wine prefix; this side keeps the master, and its
own slave descriptor so the terminal stays raw and alive between opens.
"""

import os
import select
import struct
import threading
import time
import tty

SYNC = 0xA5
HELLO, PRESS, HEARTBEAT = 0x01, 0x02, 0x03
QUERY, ACK = 0x81, 0x82
HEARTBEAT_PERIOD_S = 5.0


def crc16_ccitt_false(data):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no xorout."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def frame(frame_type, payload=b""):
    """A5 | LEN | TYPE | PAYLOAD | CRC (over LEN, TYPE, PAYLOAD), big-endian."""
    body = bytes([len(payload) + 1, frame_type]) + payload
    return bytes([SYNC]) + body + struct.pack(">H", crc16_ccitt_false(body))


def hello(receiver_id, fw_major=2, fw_minor=3, channel=4):
    return frame(HELLO, struct.pack(">IBBB", receiver_id, fw_major, fw_minor, channel))


def press(remote, key, counter, rssi=-61, battery=87):
    return frame(PRESS, struct.pack(">IBHbB", remote, key, counter, rssi, battery))


def heartbeat(uptime_s, remotes):
    return frame(HEARTBEAT, struct.pack(">IB", uptime_s, remotes))


def host_frames(buffer):
    """Takes the complete host frames off the front of `buffer` (a
    bytearray, consumed in place); yields (type, payload). Resynchronises as
    the spec says: on a bad LEN or CRC drop the sync byte only."""
    while True:
        start = buffer.find(bytes([SYNC]))
        if start < 0:
            buffer.clear()
            return
        del buffer[:start]
        if len(buffer) < 2:
            return
        length = buffer[1]
        if not 1 <= length <= 32:
            del buffer[:1]
            continue
        if len(buffer) < length + 4:
            return
        body = bytes(buffer[1 : 2 + length])
        (crc,) = struct.unpack(">H", bytes(buffer[2 + length : 4 + length]))
        if crc != crc16_ccitt_false(body):
            del buffer[:1]
            continue
        del buffer[: length + 4]
        yield body[1], body[2:]


class Receiver:
    """The emulated receiver. `start()` runs it on a thread; `press()` and
    `wait_for_acks()` are called from the test."""

    def __init__(self, receiver_id=0x501000A7):
        self.receiver_id = receiver_id
        self.master, self.slave = os.openpty()  # both close-on-exec
        # Raw before the agent opens it: no echo, no line discipline.
        tty.setraw(self.slave)
        self.slave_path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.started_at = time.monotonic()
        self.lock = threading.Lock()
        self.queries = 0
        self.acks = []  # (remote, counter), in arrival order
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)

    def press(self, remote, key, counter):
        """One press of a ProLAN-301 remote: three radio copies, 100 ms apart."""
        for _ in range(3):
            self._write(press(remote, key, counter))
            time.sleep(0.1)

    def wait_for_queries(self, count, timeout_s):
        return self._wait(lambda: self.queries >= count, timeout_s)

    def wait_for_acks(self, expected, timeout_s):
        """True once every (remote, counter) in `expected` was acknowledged."""
        return self._wait(lambda: set(expected) <= set(self.acks), timeout_s)

    def _wait(self, condition, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if condition():
                    return True
            time.sleep(0.1)
        with self.lock:
            return condition()

    def _write(self, data):
        with self.lock:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.master, view)
                except BlockingIOError:
                    select.select([], [self.master], [], 1.0)
                    continue
                view = view[written:]

    def _serve(self):
        buffer = bytearray()
        next_heartbeat = time.monotonic() + HEARTBEAT_PERIOD_S
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                self._write(heartbeat(int(now - self.started_at), 1))
                next_heartbeat = now + HEARTBEAT_PERIOD_S
            readable, _, _ = select.select([self.master], [], [], 0.2)
            if not readable:
                continue
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # EIO: no slave open (cannot happen: we hold one)
                time.sleep(0.2)
                continue
            buffer.extend(data)
            for frame_type, payload in host_frames(buffer):
                if frame_type == QUERY:
                    with self.lock:
                        self.queries += 1
                    self._write(hello(self.receiver_id))
                elif frame_type == ACK and len(payload) == 6:
                    remote, counter = struct.unpack(">IH", payload)
                    with self.lock:
                        self.acks.append((remote, counter))


if __name__ == "__main__":
    # The spec's worked examples, byte for byte.
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert hello(0x501000A7).hex(" ") == "a5 08 01 50 10 00 a7 02 03 04 46 a1"
    assert press(0x301A0002, 1, 258, -61, 87).hex(" ") == "a5 0a 02 30 1a 00 02 01 01 02 c3 57 00 a2"
    assert heartbeat(120, 3).hex(" ") == "a5 06 03 00 00 00 78 03 2f 98"
    query = frame(QUERY)
    ack = frame(ACK, struct.pack(">IH", 0x301A0002, 258))
    buffer = bytearray(b"\x00\xa5\xff" + query + ack[:5])
    assert list(host_frames(buffer)) == [(QUERY, b"")]
    buffer.extend(ack[5:])
    assert list(host_frames(buffer)) == [(ACK, struct.pack(">IH", 0x301A0002, 258))]
    print("prolan501.py: the spec's examples encode and decode")
