package adminapi

// BackupParams are gateway.backup's parameters. Path is the backup
// directory the gateway creates: absolute, not existing yet, in an existing
// directory the gateway's user may write, outside the state directory.
type BackupParams struct {
	Path  string `json:"path"`
	Spool bool   `json:"spool,omitempty"`
}

// BackupKeyNote is Backup.Key: a backup never holds the registry key.
const BackupKeyNote = "not included: keep the registry key (edgegw.key) separately; the backup is useless without it"

// Backup is gateway.backup's data and the backup directory's manifest.json
// (without Path). It holds no secret: the files hold the registry's
// records encrypted as on disk, and the key is not in the backup.
type Backup struct {
	Path     string      `json:"path,omitempty"`
	Format   int         `json:"format"`
	Created  string      `json:"created"` // RFC 3339, UTC
	Version  string      `json:"version"` // edgegw's
	Key      string      `json:"key"`
	Registry BackupFile  `json:"registry"`
	Spool    *BackupFile `json:"spool,omitempty"`
}

// BackupFile is one file of a backup.
type BackupFile struct {
	File     string `json:"file"`
	Bytes    int64  `json:"bytes"`
	Products int    `json:"products,omitempty"`
	Devices  int    `json:"devices,omitempty"`
	Messages int    `json:"messages,omitempty"`
}
