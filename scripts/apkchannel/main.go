// Command apkchannel reads and writes the Walle-compatible channel of APKs
// (the ID 0x71777777 pair of the APK Signing Block).
//
//	apkchannel read APK...                     print "<file>\t<channel>" (or "-" when none)
//	apkchannel write SRC DST CHANNEL [k=v...]  write a channel package of a signed APK
//	apkchannel stamp -n N SRC DIR              write N channel packages (ch1..chN); print the rate
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plugd/plugd/plugins/appbuild/apkchannel"
)

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  apkchannel read APK...
  apkchannel write SRC DST CHANNEL [key=value...]
  apkchannel stamp -n N SRC DIR`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "read":
		err = read(os.Args[2:])
	case "write":
		err = write(os.Args[2:])
	case "stamp":
		err = stamp(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "apkchannel:", err)
		os.Exit(1)
	}
}

func read(files []string) error {
	if len(files) == 0 {
		usage()
	}
	failed := false
	for _, f := range files {
		info, err := apkchannel.ReadFile(f)
		switch {
		case err != nil:
			fmt.Fprintf(os.Stderr, "%s: %v\n", f, err)
			failed = true
		case info == nil:
			fmt.Printf("%s\t-\n", f)
		default:
			extra := ""
			for k, v := range info.Extra {
				extra += "\t" + k + "=" + v
			}
			fmt.Printf("%s\t%s%s\n", f, info.Channel, extra)
		}
	}
	if failed {
		return fmt.Errorf("some files could not be read")
	}
	return nil
}

func write(args []string) error {
	if len(args) < 3 {
		usage()
	}
	extra := map[string]string{}
	for _, kv := range args[3:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || k == "channel" {
			return fmt.Errorf("extra %q: want key=value (key not \"channel\")", kv)
		}
		extra[k] = v
	}
	res, err := apkchannel.WriteFile(args[0], args[1], args[2], extra)
	if err != nil {
		return err
	}
	fmt.Printf("%s\t%d bytes\tsha256 %s\n", args[1], res.Size, res.SHA256)
	return nil
}

func stamp(args []string) error {
	fs := flag.NewFlagSet("stamp", flag.ExitOnError)
	n := fs.Int("n", 50, "number of channel packages")
	fs.Parse(args)
	if fs.NArg() != 2 || *n < 1 {
		usage()
	}
	src, dir := fs.Arg(0), fs.Arg(1)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	s, err := apkchannel.NewStamper(src)
	if err != nil {
		return err
	}
	defer s.Close()
	for i := 1; i <= *n; i++ {
		ch := fmt.Sprintf("ch%d", i)
		if _, err := s.Write(filepath.Join(dir, ch+".apk"), ch, nil); err != nil {
			return err
		}
	}
	d := time.Since(t0)
	fmt.Printf("stamped %d packages in %s: %.1f packages/s (%.2f ms each, including one parse+hash of the source)\n",
		*n, d.Round(time.Millisecond), float64(*n)/d.Seconds(), d.Seconds()*1000/float64(*n))
	return nil
}
