package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
)

// stdChunked reads body (a chunked body and whatever follows) the way
// net/http's client does and returns how many bytes the body took.
func stdChunked(body []byte) (n int, decoded []byte, err error) {
	head := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	msg := append([]byte(head), body...)
	br := bufio.NewReaderSize(bytes.NewReader(msg), 64<<10)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		return 0, nil, err
	}
	decoded, err = io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	rest, _ := io.Copy(io.Discard, br)
	return len(body) - int(rest), decoded, nil
}

// scanAll feeds p to a chunkScan in pieces of size step.
func scanAll(p []byte, step int) (n int, done bool, err error) {
	var cs chunkScan
	for off := 0; off < len(p); off += step {
		end := min(off+step, len(p))
		k, d, e := cs.scan(p[off:end])
		n += k
		if e != nil || d {
			return n, d, e
		}
	}
	return n, false, nil
}

func TestChunkScan(t *testing.T) {
	good := []string{
		"0\r\n\r\n",
		"3\r\nabc\r\n0\r\n\r\n",
		"3;name=value\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
		"1\r\na\r\n0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n",
		"00000003\r\nabc\r\n0\r\n\r\n",
		"f\r\n0123456789abcde\r\n0;last\r\n\r\n",
	}
	for _, b := range good {
		for _, tail := range []string{"", "HTTP/1.1 200 OK\r\n"} {
			msg := []byte(b + tail)
			wantN, _, err := stdChunked(msg)
			if err != nil {
				t.Fatalf("%q: net/http refuses it: %v", b, err)
			}
			for _, step := range []int{1, 2, 3, 7, len(msg)} {
				n, done, err := scanAll(msg, step)
				if err != nil || !done || n != wantN {
					t.Errorf("%q step %d: n=%d done=%v err=%v, net/http took %d", b+tail, step, n, done, err, wantN)
				}
			}
		}
	}
	bad := []string{
		"x\r\n",
		"\r\n",
		"3\nabc\r\n0\r\n\r\n",        // bare LF
		"3\r\nabcd\r\n0\r\n\r\n",     // data longer than the size
		"3\r\nabc\n0\r\n\r\n",        // data not ended by CRLF
		"3;\x00\r\nabc\r\n0\r\n\r\n", // control byte in the extension
		"1000000000000000\r\n",       // 2^60
		"0\r\n: no name\r\n\r\n",
		"0\r\nX: a\x01b\r\n\r\n",
		"-1\r\n",
		"3 ;x\r\nabc\r\n0\r\n\r\n", // net/http refuses a space before the extension
	}
	for _, b := range bad {
		if n, done, err := scanAll([]byte(b), 1); err == nil {
			t.Errorf("%q accepted: n=%d done=%v", b, n, done)
		}
	}
	// incomplete bodies are neither done nor wrong
	for _, b := range []string{"3\r\nab", "3\r\nabc\r\n0\r\n", "0\r\nX: 1\r\n"} {
		if _, done, err := scanAll([]byte(b), 1); done || err != nil {
			t.Errorf("%q: done=%v err=%v", b, done, err)
		}
	}
}

// FuzzChunkScan: whatever the scanner calls a complete body, net/http
// reads as one too, ending at the same byte.
func FuzzChunkScan(f *testing.F) {
	for _, s := range []string{"3\r\nabc\r\n0\r\n\r\n", "1;a=b\r\nx\r\n0\r\nT: v\r\n\r\nrest", "0\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		n, done, err := scanAll(p, 1)
		if err != nil || !done {
			return
		}
		wantN, _, serr := stdChunked(p)
		if serr != nil {
			t.Fatalf("%q: scanner took %d bytes, net/http refuses it: %v", p, n, serr)
		}
		if wantN != n {
			t.Fatalf("%q: scanner took %d bytes, net/http %d", p, n, wantN)
		}
		if n2, done2, err2 := scanAll(p, 3); n2 != n || !done2 || err2 != nil {
			t.Fatalf("%q: in pieces of 3: %d %v %v, whole: %d", p, n2, done2, err2, n)
		}
	})
}
