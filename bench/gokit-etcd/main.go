// Command gokit-etcd is the go-kit side of sd-etcdv3's interop test
// (sd-etcdv3/tests/gokit_interop.rs): it registers with go-kit's etcdv3.Registrar, or
// discovers with go-kit's etcdv3.Instancer, against a real etcd.
//
//	gokit-etcd -etcd 127.0.0.1:23790 -mode register -key /p/svc/gokit-1 -value 127.0.0.1:9301
//	    registers (leased, go-kit's keep-alive), prints "registered", deregisters when stdin closes
//	gokit-etcd -etcd 127.0.0.1:23790 -mode discover -prefix /p/svc/ -want 127.0.0.1:9302
//	    prints each instance set go-kit publishes; exits 0 once -want is in it, 1 after -timeout
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/etcdv3"
	"github.com/go-kit/log"
)

func main() {
	addr := flag.String("etcd", "127.0.0.1:2379", "etcd endpoint host:port")
	mode := flag.String("mode", "", "register or discover")
	key := flag.String("key", "", "register: the key")
	value := flag.String("value", "", "register: the value (instance string)")
	prefix := flag.String("prefix", "", "discover: the key prefix to watch")
	want := flag.String("want", "", "discover: the instance string to wait for")
	timeout := flag.Duration("timeout", 20*time.Second, "discover: how long to wait")
	flag.Parse()

	logger := log.NewLogfmtLogger(os.Stderr)
	client, err := etcdv3.NewClient(context.Background(), []string{"http://" + *addr}, etcdv3.ClientOptions{
		DialTimeout:   3 * time.Second,
		DialKeepAlive: 3 * time.Second,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(2)
	}
	switch *mode {
	case "register":
		r := etcdv3.NewRegistrar(client, etcdv3.Service{
			Key:   *key,
			Value: *value,
			TTL:   etcdv3.NewTTLOption(time.Second, 5*time.Second),
		}, logger)
		r.Register()
		fmt.Println("registered")
		_, _ = io.Copy(io.Discard, os.Stdin)
		r.Deregister()
	case "discover":
		inst, err := etcdv3.NewInstancer(client, *prefix, logger)
		if err != nil {
			fmt.Fprintln(os.Stderr, "instancer:", err)
			os.Exit(2)
		}
		events := make(chan sd.Event, 16)
		inst.Register(events)
		deadline := time.After(*timeout)
		for {
			select {
			case ev := <-events:
				fmt.Println("instances:", strings.Join(ev.Instances, ","), "err:", ev.Err)
				for _, i := range ev.Instances {
					if i == *want {
						fmt.Println("found", *want)
						os.Exit(0)
					}
				}
			case <-deadline:
				fmt.Fprintln(os.Stderr, "timeout waiting for", *want)
				os.Exit(1)
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "-mode register or discover")
		os.Exit(2)
	}
}
