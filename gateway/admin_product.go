package gateway

import (
	"errors"
	"fmt"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
)

// product.add, product.remove and product.list.

func (a *admin) productAdd(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	dialectName := p.str("dialect")
	secret := p.str("productSecret")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	dialect := a.g.cfg.Cloud.Dialect
	if dialectName != "" {
		d, err := secrets.ParseDialect(dialectName)
		if err != nil {
			return result{}, badRequest("params.dialect %q: want aliyun or enos", logsafe.Clip(dialectName))
		}
		dialect = d
	}
	if err := secrets.ValidateProductKey(dialect, pk); err != nil {
		return result{}, badRequest("params.%v", err)
	}
	if secret != "" {
		if err := checkSecretShape("params.productSecret", secret); err != nil {
			return result{}, err
		}
	}
	reg, _, _, _ := a.parts()
	if _, err := reg.GetProduct(pk); err == nil {
		return result{}, conflict("product %s: already exists", pk)
	} else if !errors.Is(err, secrets.ErrNotFound) {
		return result{}, err
	}
	prod := secrets.Product{ProductKey: pk, Dialect: dialect}
	if secret != "" {
		prod.ProductSecret = secrets.NewSecret(secret)
	}
	created, err := reg.PutProduct(prod)
	if err != nil {
		return result{}, err
	}
	if !created {
		return result{}, conflict("product %s: already exists", pk)
	}
	a.audit(c, pk, "product added", "dialect", dialect, "hasProductSecret", secret != "")
	return result{msg: fmt.Sprintf("product %s added (%s)", pk, dialect),
		data: adminapi.Product{ProductKey: pk, Dialect: string(dialect), HasProductSecret: secret != ""}}, nil
}

func (a *admin) productRemove(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	reg, _, _, _ := a.parts()
	if err := reg.DeleteProduct(pk); err != nil {
		switch {
		case errors.Is(err, secrets.ErrNotFound):
			return result{}, notFound("product %s: not found", pk)
		case errors.Is(err, secrets.ErrConflict):
			n := 0
			if devs, derr := reg.Devices(secrets.DeviceFilter{ProductKey: pk}); derr == nil {
				n = len(devs)
			}
			return result{}, conflict("product %s: still has %d devices (remove them first)", pk, n)
		}
		return result{}, err
	}
	a.audit(c, pk, "product removed")
	return result{msg: fmt.Sprintf("product %s removed", pk), data: adminapi.Product{ProductKey: pk}}, nil
}

func (a *admin) productList(c *call, p *params) (result, error) {
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, _, _, _ := a.parts()
	ps, err := reg.Products()
	if err != nil {
		return result{}, err
	}
	devs, err := reg.Devices(secrets.DeviceFilter{})
	if err != nil {
		return result{}, err
	}
	count := map[string]int{}
	for _, d := range devs {
		count[d.ProductKey]++
	}
	out := make([]adminapi.Product, 0, len(ps))
	for _, pr := range ps {
		out = append(out, adminapi.Product{ProductKey: pr.ProductKey, Dialect: string(pr.Dialect),
			HasProductSecret: !pr.ProductSecret.IsZero(), Devices: count[pr.ProductKey], Created: pr.Created, Updated: pr.Updated})
	}
	return result{msg: fmt.Sprintf("%d products", len(out)), data: out}, nil
}
