package proxy

import "errors"

// chunkScan follows a chunked message body (RFC 9112 7.1) byte by byte
// without decoding it, so that the event-loop engine can relay an
// upstream's chunked answer to the client as it arrives and still know
// where it ends. It is strict where a lenient reading could let the client
// and the gateway disagree about the framing: sizes are hex digits ended
// by CRLF (or by a chunk extension without control bytes), every chunk's
// data is followed by CRLF, trailer lines hold no control bytes.
type chunkScan struct {
	st      chunkState
	size    int64 // data bytes left in the current chunk
	digits  int
	line    int // bytes of the current size or trailer line
	trailer int // bytes of the trailer section so far
}

type chunkState uint8

const (
	csSize        chunkState = iota // chunk-size digits
	csExt                           // chunk extension, up to CR
	csSizeLF                        // LF after the size line
	csData                          // chunk data
	csDataCR                        // CR after the data
	csDataLF                        // LF after the data
	csTrailer                       // start of a trailer line (or of the final CRLF)
	csTrailerName                   // a trailer field's name, up to its colon
	csTrailerLine                   // a trailer field's value
	csTrailerLF                     // LF ending a trailer line
	csFinalLF                       // LF of the final CRLF
	csDone
)

// Limits beyond which a chunked body is refused: a size line longer than
// any sane extension, and a trailer section larger than a request head
// is allowed here.
const (
	maxChunkLine    = 4096
	maxTrailerBytes = 16 << 10
)

var errBadChunk = errors.New("malformed chunked body")

// scan consumes p and returns how many of its bytes belong to the body
// (all of them unless the body ended within p) and whether the body is
// complete.
func (cs *chunkScan) scan(p []byte) (n int, done bool, err error) {
	for n < len(p) {
		if cs.st == csData {
			k := int64(len(p) - n)
			if k > cs.size {
				k = cs.size
			}
			n += int(k)
			cs.size -= k
			if cs.size == 0 {
				cs.st = csDataCR
			}
			continue
		}
		c := p[n]
		n++
		switch cs.st {
		case csSize:
			v, ok := hexVal(c)
			switch {
			case ok:
				if cs.digits == 15 {
					return n, false, errBadChunk // beyond 2^60: no honest chunk is that big
				}
				cs.size = cs.size<<4 | int64(v)
				cs.digits++
			case cs.digits > 0 && c == '\r':
				cs.st = csSizeLF
			case cs.digits > 0 && c == ';':
				cs.st, cs.line = csExt, 0
			default:
				return n, false, errBadChunk
			}
		case csExt:
			cs.line++
			if c == '\r' {
				cs.st = csSizeLF
			} else if c < ' ' && c != '\t' || c == 0x7f || cs.line > maxChunkLine {
				return n, false, errBadChunk
			}
		case csSizeLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			cs.digits = 0
			if cs.size == 0 {
				cs.st = csTrailer
			} else {
				cs.st = csData
			}
		case csDataCR:
			if c != '\r' {
				return n, false, errBadChunk
			}
			cs.st = csDataLF
		case csDataLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			cs.st = csSize
		case csTrailer:
			if c == '\r' {
				cs.st = csFinalLF
				continue
			}
			if !tokenChar[c] {
				return n, false, errBadChunk // a field name starts the line
			}
			cs.st = csTrailerName
			cs.trailer++
		case csTrailerName:
			cs.trailer++
			switch {
			case c == ':':
				cs.st = csTrailerLine
			case !tokenChar[c] || cs.trailer > maxTrailerBytes:
				return n, false, errBadChunk
			}
		case csTrailerLine:
			cs.trailer++
			if cs.trailer > maxTrailerBytes {
				return n, false, errBadChunk
			}
			if c == '\r' {
				cs.st = csTrailerLF
			} else if c < ' ' && c != '\t' || c == 0x7f {
				return n, false, errBadChunk
			}
		case csTrailerLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			cs.st = csTrailer
		case csFinalLF:
			if c != '\n' {
				return n, false, errBadChunk
			}
			cs.st = csDone
			return n, true, nil
		case csDone:
			return n - 1, true, nil
		}
	}
	return n, cs.st == csDone, nil
}

func hexVal(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
