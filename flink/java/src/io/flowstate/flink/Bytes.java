package io.flowstate.flink;

import java.io.ByteArrayOutputStream;

/**
 * The byte layouts the Java side shares with flowstate (FORMAT.md §2.2, §3.2): unsigned LEB128
 * varints, composite keys {@code key_group u16 BE | varint len | key | varint len | namespace |
 * user_key}, list element frames {@code varint len | element}, and the packed entries of a native
 * scan.
 */
final class Bytes {
    private Bytes() {}

    /** Bytes of {@code value} as a varint. */
    static int varintLength(int value) {
        int n = 1;
        while ((value & ~0x7F) != 0) {
            value >>>= 7;
            n++;
        }
        return n;
    }

    /** Writes {@code value} as a varint at {@code at}; returns the position after it. */
    static int putVarint(byte[] out, int at, int value) {
        while ((value & ~0x7F) != 0) {
            out[at++] = (byte) ((value & 0x7F) | 0x80);
            value >>>= 7;
        }
        out[at++] = (byte) value;
        return at;
    }

    /** Appends {@code value} as a varint. */
    static void putVarint(ByteArrayOutputStream out, int value) {
        while ((value & ~0x7F) != 0) {
            out.write((value & 0x7F) | 0x80);
            value >>>= 7;
        }
        out.write(value);
    }

    /** A position in a byte array for reading varints and slices. */
    static final class Reader {
        final byte[] bytes;
        int pos;
        final int end;

        Reader(byte[] bytes, int pos, int end) {
            this.bytes = bytes;
            this.pos = pos;
            this.end = end;
        }

        boolean hasMore() {
            return pos < end;
        }

        int varint() {
            int value = 0;
            for (int shift = 0; shift < 35; shift += 7) {
                if (pos >= end) {
                    throw new FlowstateException("truncated varint at byte " + pos);
                }
                int b = bytes[pos++] & 0xFF;
                value |= (b & 0x7F) << shift;
                if ((b & 0x80) == 0) {
                    return value;
                }
            }
            throw new FlowstateException("overlong varint at byte " + pos);
        }

        int u32() {
            if (end - pos < 4) {
                throw new FlowstateException("truncated length at byte " + pos);
            }
            int v = ((bytes[pos] & 0xFF) << 24) | ((bytes[pos + 1] & 0xFF) << 16)
                    | ((bytes[pos + 2] & 0xFF) << 8) | (bytes[pos + 3] & 0xFF);
            pos += 4;
            return v;
        }

        /** Skips {@code len} bytes, returning where they start. */
        int skip(int len) {
            if (len < 0 || end - pos < len) {
                throw new FlowstateException("length " + len + " at byte " + pos + " runs past the end");
            }
            int start = pos;
            pos += len;
            return start;
        }
    }

    /** {@code kg | varint len | key | varint len | ns | userKey} (userKey may be null). */
    static byte[] compositeKey(int keyGroup, byte[] key, byte[] namespace, byte[] userKey, int userKeyLen) {
        int len = 2 + varintLength(key.length) + key.length + varintLength(namespace.length) + namespace.length
                + userKeyLen;
        byte[] out = new byte[len];
        out[0] = (byte) (keyGroup >>> 8);
        out[1] = (byte) keyGroup;
        int at = putVarint(out, 2, key.length);
        System.arraycopy(key, 0, out, at, key.length);
        at = putVarint(out, at + key.length, namespace.length);
        System.arraycopy(namespace, 0, out, at, namespace.length);
        at += namespace.length;
        if (userKeyLen > 0) {
            System.arraycopy(userKey, 0, out, at, userKeyLen);
        }
        return out;
    }

    /** The parts of a stored composite key. */
    static final class KeyParts {
        int keyGroup;
        int keyStart, keyLen, nsStart, nsLen, userKeyStart;
    }

    /** Splits a stored composite key into its parts. */
    static KeyParts parse(byte[] composite, KeyParts into) {
        if (composite.length < 2) {
            throw new FlowstateException("composite key of " + composite.length + " bytes");
        }
        into.keyGroup = ((composite[0] & 0xFF) << 8) | (composite[1] & 0xFF);
        Reader r = new Reader(composite, 2, composite.length);
        into.keyLen = r.varint();
        into.keyStart = r.skip(into.keyLen);
        into.nsLen = r.varint();
        into.nsStart = r.skip(into.nsLen);
        into.userKeyStart = r.pos;
        return into;
    }
}
