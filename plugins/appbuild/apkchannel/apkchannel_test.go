package apkchannel

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// plainZip builds a small ZIP archive.
func plainZip(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, name := range []string{"AndroidManifest.xml", "classes.dex"} {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("content of " + name))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// withBlock inserts a signing block with the given pairs before the
// central directory of z, as a signer would.
func withBlock(t *testing.T, z []byte, pairs []Pair) []byte {
	t.Helper()
	if _, err := Parse(bytes.NewReader(z), int64(len(z))); err != ErrNoSigningBlock {
		t.Fatalf("plain zip: want ErrNoSigningBlock, got %v", err)
	}
	off, eocd0, err := findEOCD(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	a2 := &APK{CDOffset: int64(binary.LittleEndian.Uint32(eocd0[16:])), EOCDOffset: off, EOCD: eocd0}
	block := Block(pairs)
	var out []byte
	out = append(out, z[:a2.CDOffset]...)
	out = append(out, block...)
	out = append(out, z[a2.CDOffset:a2.EOCDOffset]...)
	eocd := append([]byte(nil), a2.EOCD...)
	binary.LittleEndian.PutUint32(eocd[16:], uint32(a2.CDOffset)+uint32(len(block)))
	return append(out, eocd...)
}

func TestBlockAlignment(t *testing.T) {
	for _, n := range []int{0, 1, 100, 4096 - 32 - 12, 4096 - 32 - 12 - 5, 4096 - 32 - 12 - 11, 5000} {
		b := Block([]Pair{{ID: V2ID, Value: make([]byte, n)}})
		if len(b)%4096 != 0 {
			t.Errorf("value %d: block of %d bytes is not 4096-aligned", n, len(b))
		}
	}
}

func TestStampAndRead(t *testing.T) {
	dir := t.TempDir()
	sig := bytes.Repeat([]byte{7}, 1000)
	apk := withBlock(t, plainZip(t), []Pair{{ID: V2ID, Value: sig}})
	src := filepath.Join(dir, "app.apk")
	if err := os.WriteFile(src, apk, 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := ReadFile(src)
	if err != nil || info != nil {
		t.Fatalf("unstamped: info=%v err=%v", info, err)
	}
	s, err := NewStamper(src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, ch := range []string{"and-a0", "huawei", "xiaomi"} {
		dst := filepath.Join(dir, ch+".apk")
		res, err := s.Write(dst, ch, map[string]string{"buildId": "b1"})
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if res.Size != int64(len(data)) || res.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: result %+v does not match file (%d bytes, %x)", ch, res, len(data), sum)
		}
		info, err := ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if info == nil || info.Channel != ch || info.Extra["buildId"] != "b1" {
			t.Fatalf("%s: read back %+v", ch, info)
		}
		a, err := Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if a.BlockOffset != s.APK().BlockOffset {
			t.Errorf("block moved from %d to %d", s.APK().BlockOffset, a.BlockOffset)
		}
		if (a.CDOffset-a.BlockOffset)%4096 != 0 {
			t.Errorf("block size %d not 4096-aligned", a.CDOffset-a.BlockOffset)
		}
		if v, _ := a.Find(V2ID); !bytes.Equal(v, sig) {
			t.Error("signature pair changed")
		}
		if !bytes.Equal(data[:a.BlockOffset], apk[:a.BlockOffset]) {
			t.Error("ZIP entries changed")
		}
		// The result is still a valid ZIP with the same entries.
		zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("stamped APK is not a readable ZIP: %v", err)
		}
		if len(zr.File) != 2 || zr.File[1].Name != "classes.dex" {
			t.Errorf("entries: %v", zr.File)
		}
	}
	// Re-stamping a stamped APK replaces the channel, keeps one pair.
	twice := filepath.Join(dir, "twice.apk")
	if _, err := WriteFile(filepath.Join(dir, "huawei.apk"), twice, "oppo", nil); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(twice)
	a, err := Parse(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range a.Pairs {
		if p.ID == ChannelID {
			n++
		}
	}
	info, _ = a.Info()
	if n != 1 || info.Channel != "oppo" || len(info.Extra) != 0 {
		t.Errorf("restamp: %d channel pairs, info %+v", n, info)
	}
}

func TestNoSigningBlock(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "u.apk")
	os.WriteFile(src, plainZip(t), 0o644)
	if _, err := NewStamper(src); !errors.Is(err, ErrNoSigningBlock) {
		t.Fatalf("want ErrNoSigningBlock, got %v", err)
	}
	// A block without a signature pair is not enough either.
	src2 := filepath.Join(dir, "nosig.apk")
	os.WriteFile(src2, withBlock(t, plainZip(t), []Pair{{ID: 0x1234, Value: []byte("x")}}), 0o644)
	if _, err := NewStamper(src2); !errors.Is(err, ErrNoSigningBlock) {
		t.Fatalf("want ErrNoSigningBlock, got %v", err)
	}
	notZip := filepath.Join(dir, "x.apk")
	os.WriteFile(notZip, []byte(strings.Repeat("not a zip ", 10)), 0o644)
	if _, err := ReadFile(notZip); err == nil || !strings.Contains(err.Error(), "not a ZIP") {
		t.Fatalf("not a zip: %v", err)
	}
}

func TestCorruptBlockRejected(t *testing.T) {
	apk := withBlock(t, plainZip(t), []Pair{{ID: V2ID, Value: []byte("sig")}})
	a, err := Parse(bytes.NewReader(apk), int64(len(apk)))
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), apk...)
	// Claim a first pair longer than the block.
	binary.LittleEndian.PutUint64(bad[a.BlockOffset+8:], 1<<40)
	if _, err := Parse(bytes.NewReader(bad), int64(len(bad))); err == nil {
		t.Fatal("oversized pair accepted")
	}
}

// TestApksignerVerify makes a real signed APK with apksigner, stamps it and
// checks that apksigner still verifies it (the tools come from
// scripts/deps/appbuild.sh).
func TestApksignerVerify(t *testing.T) {
	for _, tool := range []string{"apksigner", "zipalign", "keytool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/deps/appbuild.sh", tool)
		}
	}
	dir := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	os.WriteFile(filepath.Join(dir, "u.apk"), plainZip(t), 0o644)
	run("zipalign", "-f", "4", "u.apk", "a.apk")
	run("keytool", "-genkeypair", "-keystore", "k.jks", "-storepass", "pass123", "-keypass", "pass123",
		"-alias", "k", "-keyalg", "RSA", "-keysize", "2048", "-validity", "10", "-dname", "CN=throwaway")
	run("apksigner", "sign", "--ks", "k.jks", "--ks-pass", "pass:pass123", "--min-sdk-version", "24",
		"--v4-signing-enabled", "false", "--out", "s.apk", "a.apk")
	if _, err := WriteFile(filepath.Join(dir, "s.apk"), filepath.Join(dir, "c.apk"), "and-a0", nil); err != nil {
		t.Fatal(err)
	}
	out := run("apksigner", "verify", "-v", "--min-sdk-version", "24", "c.apk")
	if !strings.Contains(out, "Verified using v2 scheme (APK Signature Scheme v2): true") {
		t.Fatalf("v2 not verified:\n%s", out)
	}
	info, err := ReadFile(filepath.Join(dir, "c.apk"))
	if err != nil || info == nil || info.Channel != "and-a0" {
		t.Fatalf("read back: %+v %v", info, err)
	}
	// A byte flipped inside the ZIP entries must make verification fail,
	// which shows the check above can fail.
	data, _ := os.ReadFile(filepath.Join(dir, "c.apk"))
	data[40] ^= 0xff
	os.WriteFile(filepath.Join(dir, "bad.apk"), data, 0o644)
	cmd := exec.Command("apksigner", "verify", "--min-sdk-version", "24", "bad.apk")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("tampered APK verified:\n%s", out)
	}
}
