package gateway

import "syscall"

func statDisk(dir string) diskSpace {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil || fs.Blocks == 0 {
		return diskSpace{}
	}
	bs := int64(fs.Bsize)
	d := diskSpace{Free: int64(fs.Bavail) * bs, Total: int64(fs.Blocks) * bs}
	d.FreePct = 100 * float64(d.Free) / float64(d.Total)
	return d
}
