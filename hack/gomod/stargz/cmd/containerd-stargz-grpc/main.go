// A thin containerd proxy snapshotter: stargz-snapshotter's service over a unix socket.
package main

import (
	"context"
	"flag"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket")
	configPath := flag.String("config", "", "TOML config")
	root := flag.String("root", "", "root directory")
	flag.Parse()
	ctx := context.Background()
	var cfg service.Config
	if *configPath != "" {
		md, err := toml.DecodeFile(*configPath, &cfg)
		if err != nil {
			log.G(ctx).WithError(err).Fatal("config")
		}
		// The library ignores a key it does not know: a misspelt setting would silently
		// leave its default in place.
		if unknown := md.Undecoded(); len(unknown) > 0 {
			log.G(ctx).Fatalf("config %s: unknown keys %v", *configPath, unknown)
		}
	}
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &cfg)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter")
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	_ = os.MkdirAll(filepath.Dir(*address), 0o700)
	_ = os.RemoveAll(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("listen")
	}
	go func() { _ = rpc.Serve(l) }()
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	<-c
	rpc.Stop()
	_ = sn.Close()
}
