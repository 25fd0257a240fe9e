// SPDX-License-Identifier: GPL-2.0
/*
 * shoal_ivshmem - deliver ivshmem doorbell interrupts to userspace.
 *
 * Binds the ivshmem PCI device (1af4:1110, Shoal's or QEMU's
 * ivshmem-doorbell), enables MSI-X (or INTx as a fallback) and creates a
 * misc device /dev/shoal_ivshmemN whose read() blocks until the next
 * interrupt on any vector and returns the total interrupt count as a u64.
 * poll() reports readability the same way; writes are accepted and ignored
 * (the Shoal SDK writes a 32-bit 1 after each read, which re-enables INTx on
 * uio_pci_generic). The region and registers are mapped by userspace through
 * sysfs (resource2, resource0), as without this driver: the driver does not
 * claim the BARs.
 *
 * The misc device's parent is the PCI function, so the node appears under
 * /sys/bus/pci/devices/<bdf>/misc/, where the SDK looks for it.
 */
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#define SHOAL_IVSHMEM_VENDOR 0x1af4
#define SHOAL_IVSHMEM_DEVICE 0x1110
#define REG_INTR_MASK 0x0
#define REG_INTR_STATUS 0x4
#define MAX_VECTORS 64

static DEFINE_IDA(shoal_ida);

struct shoal_dev {
	struct pci_dev *pdev;
	void __iomem *regs;
	struct miscdevice misc;
	char name[32];
	int id;
	int nvec;
	bool msix;
	atomic64_t count;
	wait_queue_head_t wait;
};

struct shoal_file {
	struct shoal_dev *dev;
	u64 seen;
};

static irqreturn_t shoal_irq(int irq, void *data)
{
	struct shoal_dev *dev = data;

	if (!dev->msix) {
		/* INTx may be shared: reading IntrStatus also clears it. */
		if (!readl(dev->regs + REG_INTR_STATUS))
			return IRQ_NONE;
	}
	atomic64_inc(&dev->count);
	wake_up_interruptible(&dev->wait);
	return IRQ_HANDLED;
}

static int shoal_open(struct inode *inode, struct file *file)
{
	struct miscdevice *misc = file->private_data;
	struct shoal_dev *dev = container_of(misc, struct shoal_dev, misc);
	struct shoal_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	f->dev = dev;
	f->seen = atomic64_read(&dev->count);
	file->private_data = f;
	return 0;
}

static int shoal_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static ssize_t shoal_read(struct file *file, char __user *buf, size_t len,
			  loff_t *ppos)
{
	struct shoal_file *f = file->private_data;
	struct shoal_dev *dev = f->dev;
	u64 now;
	int ret;

	if (len < sizeof(u64))
		return -EINVAL;
	if (file->f_flags & O_NONBLOCK) {
		if (atomic64_read(&dev->count) == f->seen)
			return -EAGAIN;
	} else {
		ret = wait_event_interruptible(dev->wait,
					       atomic64_read(&dev->count) != f->seen);
		if (ret)
			return ret;
	}
	now = atomic64_read(&dev->count);
	f->seen = now;
	if (copy_to_user(buf, &now, sizeof(now)))
		return -EFAULT;
	return sizeof(now);
}

static ssize_t shoal_write(struct file *file, const char __user *buf,
			   size_t len, loff_t *ppos)
{
	return len;
}

static __poll_t shoal_poll(struct file *file, poll_table *wait)
{
	struct shoal_file *f = file->private_data;

	poll_wait(file, &f->dev->wait, wait);
	if (atomic64_read(&f->dev->count) != f->seen)
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static const struct file_operations shoal_fops = {
	.owner = THIS_MODULE,
	.open = shoal_open,
	.release = shoal_release,
	.read = shoal_read,
	.write = shoal_write,
	.poll = shoal_poll,
	.llseek = noop_llseek,
};

static void shoal_free_irqs(struct shoal_dev *dev, int n)
{
	while (n-- > 0)
		free_irq(pci_irq_vector(dev->pdev, n), dev);
}

static int shoal_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct shoal_dev *dev;
	int ret, i;

	dev = devm_kzalloc(&pdev->dev, sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	dev->pdev = pdev;
	atomic64_set(&dev->count, 0);
	init_waitqueue_head(&dev->wait);

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	pci_set_master(pdev);
	dev->regs = pcim_iomap(pdev, 0, 0x100);
	if (!dev->regs)
		return -ENOMEM;

	dev->nvec = pci_alloc_irq_vectors(pdev, 1, MAX_VECTORS, PCI_IRQ_MSIX);
	dev->msix = dev->nvec > 0;
	if (!dev->msix) {
		dev->nvec = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_LEGACY);
		if (dev->nvec < 0)
			return dev->nvec;
	}
	for (i = 0; i < dev->nvec; i++) {
		ret = request_irq(pci_irq_vector(pdev, i), shoal_irq,
				  dev->msix ? 0 : IRQF_SHARED, "shoal_ivshmem", dev);
		if (ret) {
			shoal_free_irqs(dev, i);
			goto free_vectors;
		}
	}
	if (!dev->msix)
		writel(0xffffffff, dev->regs + REG_INTR_MASK);

	dev->id = ida_alloc(&shoal_ida, GFP_KERNEL);
	if (dev->id < 0) {
		ret = dev->id;
		goto free_irqs;
	}
	snprintf(dev->name, sizeof(dev->name), "shoal_ivshmem%d", dev->id);
	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = dev->name;
	dev->misc.fops = &shoal_fops;
	dev->misc.parent = &pdev->dev;
	dev->misc.mode = 0660;
	ret = misc_register(&dev->misc);
	if (ret)
		goto free_id;
	pci_set_drvdata(pdev, dev);
	dev_info(&pdev->dev, "%s: %d %s vector(s)\n", dev->name, dev->nvec,
		 dev->msix ? "MSI-X" : "INTx");
	return 0;

free_id:
	ida_free(&shoal_ida, dev->id);
free_irqs:
	if (!dev->msix)
		writel(0, dev->regs + REG_INTR_MASK);
	shoal_free_irqs(dev, dev->nvec);
free_vectors:
	pci_free_irq_vectors(pdev);
	return ret;
}

static void shoal_remove(struct pci_dev *pdev)
{
	struct shoal_dev *dev = pci_get_drvdata(pdev);

	misc_deregister(&dev->misc);
	ida_free(&shoal_ida, dev->id);
	if (!dev->msix)
		writel(0, dev->regs + REG_INTR_MASK);
	shoal_free_irqs(dev, dev->nvec);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id shoal_ids[] = {
	{ PCI_DEVICE(SHOAL_IVSHMEM_VENDOR, SHOAL_IVSHMEM_DEVICE) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, shoal_ids);

static struct pci_driver shoal_driver = {
	.name = "shoal_ivshmem",
	.id_table = shoal_ids,
	.probe = shoal_probe,
	.remove = shoal_remove,
};
module_pci_driver(shoal_driver);

MODULE_DESCRIPTION("Shoal ivshmem doorbell interrupts for userspace");
MODULE_LICENSE("GPL v2");
