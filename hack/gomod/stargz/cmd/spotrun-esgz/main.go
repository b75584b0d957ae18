// Converts the one image of an OCI layout into zstd:chunked layers (eStargz's TOC in zstd),
// the format stargz-snapshotter pulls lazily, written as a new OCI layout. The files named
// by a list in the image (-prioritized) go first in each layer, before its prefetch
// landmark: a node fetches them at once, in one range per layer. Listed files larger than
// -prioritized-max are left to be read in chunks: prefetching a start's libraries whole
// (3 GB of the trainer's) costs about what pulling the whole image does.
package main

import (
	"archive/tar"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

type zstdCompression struct {
	*zstdchunked.Decompressor
	*windowedCompressor
}

// windowedCompressor is zstdchunked's compressor with a smaller window in every frame.
// Its own writer declares klauspost/compress's default window, 8 MiB, and a reader
// allocates the declared window (plus 64 KiB) for each frame it opens: the snapshotter
// cleared 8 MiB for every file a start read through it, most of its CPU (docs/images.md).
// A frame holds one small file or one chunk of a larger one, so the window costs little
// ratio.
type windowedCompressor struct {
	*zstdchunked.Compressor
	window int
	pool   sync.Pool
}

func (c *windowedCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	if e, ok := c.pool.Get().(*zstd.Encoder); ok {
		e.Reset(w)
		return &pooledEncoder{e, c}, nil
	}
	e, err := zstd.NewWriter(w, zstd.WithEncoderLevel(c.CompressionLevel),
		zstd.WithLowerEncoderMem(true), zstd.WithWindowSize(c.window))
	if err != nil {
		return nil, err
	}
	return &pooledEncoder{e, c}, nil
}

// pooledEncoder goes back to its compressor's pool once closed.
type pooledEncoder struct {
	*zstd.Encoder
	c *windowedCompressor
}

func (p *pooledEncoder) Close() error {
	err := p.Encoder.Close()
	p.c.pool.Put(p.Encoder)
	return err
}

func main() {
	src := flag.String("src", "", "OCI layout holding one image")
	dst := flag.String("dst", "", "OCI layout to write (a new folder)")
	tmp := flag.String("tmp", os.TempDir(), "scratch folder")
	level := flag.Int("level", 3, "zstd level")
	prioritized := flag.String("prioritized", "", "file in the image listing the files to fetch first")
	largest := flag.Int64("prioritized-max", 16<<20, "bytes: a larger listed file is fetched as read")
	window := flag.Int("window", 512<<10, "bytes: each zstd frame's window (a power of 2)")
	flag.Parse()
	c := converter{tmp: *tmp, level: *level, largest: *largest, window: *window}
	if err := c.convert(context.Background(), *src, *dst, *prioritized); err != nil {
		log.Fatal(err)
	}
}

type converter struct {
	tmp     string
	level   int
	largest int64    // a listed file larger than this is not fetched first
	window  int      // each zstd frame's window
	first   []string // the listed files
	scratch []string // converted blobs, removed once the layout is written
}

func (c *converter) convert(ctx context.Context, src, dst, prioritized string) error {
	defer func() {
		for _, f := range c.scratch {
			os.Remove(f)
		}
	}()
	index, err := layout.ImageIndexFromPath(src)
	if err != nil {
		return err
	}
	manifest, err := index.IndexManifest()
	if err != nil {
		return err
	}
	if len(manifest.Manifests) != 1 {
		return fmt.Errorf("%s: %d images, want 1", src, len(manifest.Manifests))
	}
	img, err := index.Image(manifest.Manifests[0].Digest)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if prioritized != "" {
		if c.first, err = listedFiles(layers, prioritized); err != nil {
			return err
		}
		log.Printf("%d files listed in %s", len(c.first), prioritized)
	}
	out := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	for i, l := range layers {
		add, err := c.convertLayer(ctx, l)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if out, err = mutate.Append(out, add); err != nil {
			return err
		}
		log.Printf("layer %d of %d converted", i+1, len(layers))
	}
	outCfg, err := out.ConfigFile()
	if err != nil {
		return err
	}
	config := cfg.DeepCopy()
	config.RootFS = outCfg.RootFS
	if out, err = mutate.ConfigFile(out, config); err != nil {
		return err
	}
	p, err := layout.Write(dst, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(out)
}

// listedFiles reads the file at path from the topmost layer holding it: one absolute
// path per line, returned as the layers' entry names.
func listedFiles(layers []v1.Layer, path string) ([]string, error) {
	want := strings.TrimPrefix(path, "/")
	for i := len(layers) - 1; i >= 0; i-- {
		rc, err := layers[i].Uncompressed()
		if err != nil {
			return nil, err
		}
		data, found, err := readEntry(tar.NewReader(rc), want)
		rc.Close()
		if err != nil {
			return nil, err
		}
		if found {
			var names []string
			for _, line := range strings.Split(string(data), "\n") {
				if line = strings.TrimSpace(line); line != "" {
					names = append(names, strings.TrimPrefix(line, "/"))
				}
			}
			return names, nil
		}
	}
	return nil, fmt.Errorf("no layer holds %s", path)
}

func readEntry(tr *tar.Reader, name string) ([]byte, bool, error) {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") == name {
			data, err := io.ReadAll(tr)
			return data, err == nil, err
		}
	}
}

// firstIn is the listed files that this layer holds, no larger than c.largest, in the
// list's order.
func (c *converter) firstIn(raw io.ReadSeeker) ([]string, error) {
	if _, err := raw.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	small := map[string]bool{}
	tr := tar.NewReader(raw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg && h.Size <= c.largest {
			small[strings.TrimPrefix(path.Clean("/"+h.Name), "/")] = true
		}
	}
	var names []string
	for _, name := range c.first {
		if small[name] {
			names = append(names, name)
		}
	}
	return names, nil
}

func (c *converter) convertLayer(ctx context.Context, l v1.Layer) (mutate.Addendum, error) {
	var none mutate.Addendum
	raw, err := os.CreateTemp(c.tmp, "esgz-tar-")
	if err != nil {
		return none, err
	}
	defer os.Remove(raw.Name())
	defer raw.Close()
	rc, err := l.Uncompressed()
	if err != nil {
		return none, err
	}
	size, err := io.Copy(raw, rc)
	rc.Close()
	if err != nil {
		return none, err
	}
	first, err := c.firstIn(raw)
	if err != nil {
		return none, err
	}
	meta := map[string]string{}
	blob, err := estargz.Build(io.NewSectionReader(raw, 0, size), estargz.WithContext(ctx),
		estargz.WithPrioritizedFiles(first),
		estargz.WithCompression(&zstdCompression{new(zstdchunked.Decompressor),
			&windowedCompressor{Compressor: &zstdchunked.Compressor{
				CompressionLevel: zstd.EncoderLevelFromZstd(c.level), Metadata: meta}, window: c.window}}))
	if err != nil {
		return none, err
	}
	defer blob.Close()
	conv, err := os.CreateTemp(c.tmp, "esgz-blob-")
	if err != nil {
		return none, err
	}
	c.scratch = append(c.scratch, conv.Name())
	if _, err := io.Copy(conv, blob); err != nil {
		return none, err
	}
	conv.Close()
	if err := blob.Close(); err != nil {
		return none, err
	}
	layer, err := tarball.LayerFromFile(conv.Name(), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		return none, err
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return none, err
	}
	ann := map[string]string{
		estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
		estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(usize, 10),
	}
	for _, k := range []string{zstdchunked.ManifestChecksumAnnotation, zstdchunked.ManifestPositionAnnotation} {
		if v, ok := meta[k]; ok {
			ann[k] = v
		}
	}
	return mutate.Addendum{Layer: layer, Annotations: ann}, nil
}
