// Package apkchannel reads and writes the distribution channel of an Android
// APK the way Walle does: as an ID-value pair (ID 0x71777777, value the JSON
// object {"channel":"<code>", ...}) inside the APK Signing Block.
//
// The APK Signature Scheme v2/v3 signatures cover the ZIP entries, the
// central directory and the end of central directory record, but not the
// signing block's other pairs, so a channel written there leaves the
// signature valid: one signed build yields any number of channel packages
// without re-signing. The block is kept a multiple of 4096 bytes with the
// verity padding pair (ID 0x42726577), as apksigner writes it.
//
// Layout of a signed APK (https://source.android.com/docs/security/features/apksigning/v2):
//
//	[ZIP entries][APK Signing Block][central directory][end of central directory]
//
// APK Signing Block:
//
//	uint64 size (of what follows this field)
//	repeated: uint64 pair length, uint32 ID, value (length-4 bytes)
//	uint64 size (same as the first)
//	"APK Sig Block 42" (16 bytes)
package apkchannel

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

const (
	// ChannelID is Walle's ID for the channel payload.
	ChannelID uint32 = 0x71777777
	// PaddingID is the verity padding pair apksigner uses to keep the
	// signing block a multiple of 4096 bytes.
	PaddingID uint32 = 0x42726577
	// V2ID, V3ID and V31ID are the signature scheme pairs.
	V2ID  uint32 = 0x7109871a
	V3ID  uint32 = 0xf05368c0
	V31ID uint32 = 0x1b93ad61

	blockMagic = "APK Sig Block 42"
	alignment  = 4096
	eocdSig    = 0x06054b50
	eocdMin    = 22
	maxComment = 0xffff
)

// ErrNoSigningBlock means the APK has no APK Signing Block (it is unsigned or
// signed with the v1 JAR scheme only), so a channel cannot be written into
// it without breaking or redoing the signature.
var ErrNoSigningBlock = errors.New("apkchannel: APK has no APK Signing Block (not signed with APK Signature Scheme v2 or later)")

// Pair is one ID-value pair of the signing block.
type Pair struct {
	ID    uint32
	Value []byte
}

// APK is the parsed tail structure of an APK.
type APK struct {
	Size        int64  // file size
	BlockOffset int64  // offset of the signing block (= end of the ZIP entries)
	CDOffset    int64  // offset of the central directory
	CDSize      int64  // size of the central directory
	EOCDOffset  int64  // offset of the end of central directory record
	EOCD        []byte // the EOCD record with its comment
	Pairs       []Pair // the signing block's pairs, in file order
}

// Parse reads the structure of the APK in r (of the given size).
func Parse(r io.ReaderAt, size int64) (*APK, error) {
	eocdOff, eocd, err := findEOCD(r, size)
	if err != nil {
		return nil, err
	}
	cdSize := int64(binary.LittleEndian.Uint32(eocd[12:]))
	cdOff := int64(binary.LittleEndian.Uint32(eocd[16:]))
	if cdOff == 0xffffffff || cdSize == 0xffffffff {
		return nil, errors.New("apkchannel: ZIP64 archives are not supported")
	}
	if cdOff+cdSize != eocdOff {
		return nil, fmt.Errorf("apkchannel: central directory (offset %d, size %d) does not end at the end of central directory record (%d)", cdOff, cdSize, eocdOff)
	}
	a := &APK{Size: size, CDOffset: cdOff, CDSize: cdSize, EOCDOffset: eocdOff, EOCD: eocd}
	if cdOff < 32 {
		return nil, ErrNoSigningBlock
	}
	var footer [24]byte
	if _, err := r.ReadAt(footer[:], cdOff-24); err != nil {
		return nil, fmt.Errorf("apkchannel: read signing block footer: %w", err)
	}
	if string(footer[8:]) != blockMagic {
		return nil, ErrNoSigningBlock
	}
	blockSize := binary.LittleEndian.Uint64(footer[:8])
	if blockSize < 24 || blockSize > uint64(cdOff-8) {
		return nil, fmt.Errorf("apkchannel: signing block size %d out of range", blockSize)
	}
	start := cdOff - int64(blockSize) - 8
	buf := make([]byte, blockSize+8)
	if _, err := r.ReadAt(buf, start); err != nil {
		return nil, fmt.Errorf("apkchannel: read signing block: %w", err)
	}
	if binary.LittleEndian.Uint64(buf[:8]) != blockSize {
		return nil, errors.New("apkchannel: signing block sizes at its start and end differ")
	}
	a.BlockOffset = start
	pairs := buf[8 : len(buf)-24]
	for len(pairs) > 0 {
		if len(pairs) < 12 {
			return nil, errors.New("apkchannel: truncated ID-value pair in signing block")
		}
		n := binary.LittleEndian.Uint64(pairs[:8])
		if n < 4 || n > uint64(len(pairs)-8) {
			return nil, fmt.Errorf("apkchannel: ID-value pair length %d out of range", n)
		}
		id := binary.LittleEndian.Uint32(pairs[8:12])
		a.Pairs = append(a.Pairs, Pair{ID: id, Value: pairs[12 : 8+n]})
		pairs = pairs[8+n:]
	}
	return a, nil
}

func findEOCD(r io.ReaderAt, size int64) (int64, []byte, error) {
	if size < eocdMin {
		return 0, nil, errors.New("apkchannel: file too small to be a ZIP archive")
	}
	n := int64(eocdMin + maxComment)
	if n > size {
		n = size
	}
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, size-n); err != nil {
		return 0, nil, fmt.Errorf("apkchannel: read end of archive: %w", err)
	}
	// Scan backwards for a record whose comment length reaches exactly the
	// end of the file, so a signature inside a comment is not mistaken for
	// the record.
	for i := len(buf) - eocdMin; i >= 0; i-- {
		if binary.LittleEndian.Uint32(buf[i:]) != eocdSig {
			continue
		}
		clen := int(binary.LittleEndian.Uint16(buf[i+20:]))
		if i+eocdMin+clen == len(buf) {
			return size - n + int64(i), append([]byte(nil), buf[i:]...), nil
		}
	}
	return 0, nil, errors.New("apkchannel: no end of central directory record: not a ZIP archive")
}

// Find returns the value of the pair with the given ID.
func (a *APK) Find(id uint32) ([]byte, bool) {
	for _, p := range a.Pairs {
		if p.ID == id {
			return p.Value, true
		}
	}
	return nil, false
}

// Signed reports whether the block holds a v2 or later signature.
func (a *APK) Signed() bool {
	for _, p := range a.Pairs {
		if p.ID == V2ID || p.ID == V3ID || p.ID == V31ID {
			return true
		}
	}
	return false
}

// Info is the channel payload: the channel and any extra string fields.
type Info struct {
	Channel string
	Extra   map[string]string
}

// Info decodes the Walle payload, if present.
func (a *APK) Info() (*Info, error) {
	v, ok := a.Find(ChannelID)
	if !ok {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("apkchannel: channel payload is not a JSON object of strings: %w", err)
	}
	info := &Info{Channel: m["channel"], Extra: map[string]string{}}
	for k, v := range m {
		if k != "channel" {
			info.Extra[k] = v
		}
	}
	return info, nil
}

// ReadFile returns the channel info of the APK at path, or nil when it has
// a signing block without a channel.
func ReadFile(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	a, err := Parse(f, st.Size())
	if err != nil {
		return nil, err
	}
	return a.Info()
}

// Payload encodes a channel and extras as Walle's JSON payload.
func Payload(channel string, extra map[string]string) ([]byte, error) {
	if channel == "" {
		return nil, errors.New("apkchannel: empty channel")
	}
	m := map[string]string{}
	for k, v := range extra {
		m[k] = v
	}
	m["channel"] = channel
	return json.Marshal(m) // map keys are sorted: deterministic output
}

// Block encodes a signing block from pairs, replacing any padding pair with
// a new one so the whole block is a multiple of 4096 bytes.
func Block(pairs []Pair) []byte {
	size := 8 + 8 + 16 // leading size, trailing size, magic
	var kept []Pair
	for _, p := range pairs {
		if p.ID == PaddingID {
			continue
		}
		kept = append(kept, p)
		size += 12 + len(p.Value)
	}
	if rem := size % alignment; rem != 0 {
		pad := alignment - rem
		if pad < 12 { // the smallest pair is 12 bytes
			pad += alignment
		}
		kept = append(kept, Pair{ID: PaddingID, Value: make([]byte, pad-12)})
		size += pad
	}
	out := make([]byte, 0, size)
	out = binary.LittleEndian.AppendUint64(out, uint64(size-8))
	for _, p := range kept {
		out = binary.LittleEndian.AppendUint64(out, uint64(4+len(p.Value)))
		out = binary.LittleEndian.AppendUint32(out, p.ID)
		out = append(out, p.Value...)
	}
	out = binary.LittleEndian.AppendUint64(out, uint64(size-8))
	out = append(out, blockMagic...)
	return out
}

// WithPair returns pairs with the pair of the given ID set to value (added
// before the padding if missing), keeping the others in order.
func WithPair(pairs []Pair, id uint32, value []byte) []Pair {
	out := make([]Pair, 0, len(pairs)+1)
	done := false
	for _, p := range pairs {
		if p.ID == id {
			if !done {
				out = append(out, Pair{ID: id, Value: value})
				done = true
			}
			continue
		}
		out = append(out, p)
	}
	if !done {
		out = append(out, Pair{ID: id, Value: value})
	}
	// Keep the padding last, where apksigner puts it.
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID != PaddingID && out[j].ID == PaddingID })
	return out
}

// Stamper writes channel packages of one signed APK; it is not safe for
// concurrent use. It parses the source once and hashes its unchanged prefix
// once, so each package costs an in-kernel file copy plus a few KiB.
type Stamper struct {
	src    *os.File
	apk    *APK
	prefix []byte // marshaled SHA-256 state after the ZIP entries
	cd     []byte
}

// NewStamper opens the signed APK at path. It fails with ErrNoSigningBlock
// (wrapped) for an APK without a v2+ signature.
func NewStamper(path string) (*Stamper, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	a, err := Parse(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !a.Signed() {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, ErrNoSigningBlock)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, a.BlockOffset)); err != nil {
		f.Close()
		return nil, fmt.Errorf("apkchannel: hash %s: %w", path, err)
	}
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		f.Close()
		return nil, err
	}
	cd := make([]byte, a.CDSize)
	if _, err := f.ReadAt(cd, a.CDOffset); err != nil {
		f.Close()
		return nil, fmt.Errorf("apkchannel: read central directory: %w", err)
	}
	return &Stamper{src: f, apk: a, prefix: state, cd: cd}, nil
}

// APK is the parsed source.
func (s *Stamper) APK() *APK { return s.apk }

// Close releases the source file.
func (s *Stamper) Close() error { return s.src.Close() }

// Result describes a written package.
type Result struct {
	Size   int64
	SHA256 string
}

// Write writes the package for channel to dst (created or truncated) and
// returns its size and SHA-256.
func (s *Stamper) Write(dst, channel string, extra map[string]string) (Result, error) {
	payload, err := Payload(channel, extra)
	if err != nil {
		return Result{}, err
	}
	block := Block(WithPair(s.apk.Pairs, ChannelID, payload))
	newCD := s.apk.BlockOffset + int64(len(block))
	eocd := append([]byte(nil), s.apk.EOCD...)
	if newCD > 0xffffffff {
		return Result{}, errors.New("apkchannel: result would need ZIP64")
	}
	binary.LittleEndian.PutUint32(eocd[16:], uint32(newCD))

	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return Result{}, err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(dst)
		}
	}()
	// File to file through an io.LimitedReader of the *os.File: the kernel
	// copies (copy_file_range, a reflink on filesystems that share extents)
	// without the data passing through this process.
	if _, err := s.src.Seek(0, io.SeekStart); err != nil {
		return Result{}, err
	}
	if _, err := io.CopyN(out, s.src, s.apk.BlockOffset); err != nil {
		return Result{}, fmt.Errorf("apkchannel: copy entries: %w", err)
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(s.prefix); err != nil {
		return Result{}, err
	}
	tail := io.MultiWriter(out, h)
	for _, b := range [][]byte{block, s.cd, eocd} {
		if _, err := tail.Write(b); err != nil {
			return Result{}, fmt.Errorf("apkchannel: write %s: %w", dst, err)
		}
	}
	if err := out.Close(); err != nil {
		return Result{}, err
	}
	ok = true
	return Result{Size: newCD + int64(len(s.cd)) + int64(len(eocd)), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// WriteFile writes the package for channel of the signed APK src to dst.
func WriteFile(src, dst, channel string, extra map[string]string) (Result, error) {
	s, err := NewStamper(src)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	return s.Write(dst, channel, extra)
}
