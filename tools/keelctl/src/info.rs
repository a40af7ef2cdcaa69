//! `keelctl info`: the module's version and what the hardware offers.
use keel_sys::uapi;
use serde::Serialize;

/// The capability bits with the names `info` shows them by.
const CAP_NAMES: &[(u64, &str)] = &[
    (uapi::KEEL_CAP_SLAT as u64, "slat"),
    (uapi::KEEL_CAP_SLAT_2M as u64, "slat_2m"),
    (uapi::KEEL_CAP_SLAT_1G as u64, "slat_1g"),
    (uapi::KEEL_CAP_TAGGED_TLB as u64, "tagged_tlb"),
    (
        uapi::KEEL_CAP_UNRESTRICTED_GUEST as u64,
        "unrestricted_guest",
    ),
    (uapi::KEEL_CAP_PREEMPTION_TIMER as u64, "preemption_timer"),
    (uapi::KEEL_CAP_NRIP_SAVE as u64, "nrip_save"),
    (uapi::KEEL_CAP_VMCB_CLEAN as u64, "vmcb_clean"),
    (uapi::KEEL_CAP_DECODE_ASSISTS as u64, "decode_assists"),
    (uapi::KEEL_CAP_FLUSH_BY_ASID as u64, "flush_by_asid"),
];

/// What `info` reports.
#[derive(Serialize, Debug, PartialEq)]
pub struct Info {
    /// Module version, "major.minor.patch".
    pub version: String,
    /// Interface version.
    pub abi_version: u32,
    /// "vmx", "svm" or "none".
    pub vendor: &'static str,
    /// VMCS revision id or SVM revision.
    pub revision: u32,
    /// CPUs online.
    pub online_cpus: u32,
    /// VPIDs or ASIDs.
    pub nr_tags: u32,
    /// Names of the capabilities present.
    pub caps: Vec<&'static str>,
}

impl Info {
    /// Builds the report from the two ioctls' answers.
    pub fn new(v: &uapi::keel_version, c: &uapi::keel_caps) -> Self {
        let vendor = match c.vendor {
            uapi::KEEL_VENDOR_VMX => "vmx",
            uapi::KEEL_VENDOR_SVM => "svm",
            _ => "none",
        };
        Self {
            version: format!("{}.{}.{}", v.major, v.minor, v.patch),
            abi_version: v.abi_version,
            vendor,
            revision: c.revision,
            online_cpus: c.online_cpus,
            nr_tags: c.nr_tags,
            caps: CAP_NAMES
                .iter()
                .filter(|(bit, _)| c.caps & bit != 0)
                .map(|&(_, n)| n)
                .collect(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.caps.contains(&name)
    }

    fn yes(&self, name: &str) -> &'static str {
        if self.has(name) {
            "yes"
        } else {
            "no"
        }
    }

    /// The human-readable report.
    pub fn human(&self) -> String {
        let vmx = self.vendor == "vmx";
        let (vendor, slat, tags, rev) = match self.vendor {
            "vmx" => ("Intel VMX", "EPT", "VPIDs", "VMCS revision"),
            "svm" => ("AMD SVM", "NPT", "ASIDs", "SVM revision"),
            _ => ("none", "second-level paging", "tags", "revision"),
        };
        let mut pages = vec!["4K"];
        if self.has("slat_2m") {
            pages.push("2M");
        }
        if self.has("slat_1g") {
            pages.push("1G");
        }
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
        line(
            "keel",
            format!("{} (interface version {})", self.version, self.abi_version),
        );
        line("vendor", format!("{vendor} ({rev} {:#x})", self.revision));
        line("online cpus", self.online_cpus.to_string());
        line(
            slat,
            if self.has("slat") {
                format!("yes ({})", pages.join(", "))
            } else {
                "no".into()
            },
        );
        line(
            tags,
            if self.has("tagged_tlb") {
                self.nr_tags.to_string()
            } else {
                "none".into()
            },
        );
        line("unrestricted guest", self.yes("unrestricted_guest").into());
        if vmx {
            line("preemption timer", self.yes("preemption_timer").into());
        } else {
            line("nrip save", self.yes("nrip_save").into());
            line("decode assists", self.yes("decode_assists").into());
            line("vmcb clean bits", self.yes("vmcb_clean").into());
            line("flush by asid", self.yes("flush_by_asid").into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(vendor: u32, caps: u64) -> Info {
        let v = uapi::keel_version {
            abi_version: 1,
            major: 0,
            minor: 1,
            patch: 0,
            ..Default::default()
        };
        let c = uapi::keel_caps {
            vendor,
            caps,
            nr_tags: 15,
            revision: 1,
            online_cpus: 2,
            ..Default::default()
        };
        Info::new(&v, &c)
    }

    #[test]
    fn svm_names_and_json() {
        let caps =
            (uapi::KEEL_CAP_SLAT | uapi::KEEL_CAP_SLAT_2M | uapi::KEEL_CAP_TAGGED_TLB) as u64;
        let i = sample(uapi::KEEL_VENDOR_SVM, caps);
        assert_eq!(i.vendor, "svm");
        assert_eq!(i.caps, ["slat", "slat_2m", "tagged_tlb"]);
        let j: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
        assert_eq!(j["online_cpus"], 2);
        assert_eq!(j["version"], "0.1.0");
        let h = i.human();
        assert!(h.contains("AMD SVM"), "{h}");
        assert!(h.contains("NPT") && h.contains("yes (4K, 2M)"), "{h}");
        assert!(h.contains("nrip save             no"), "{h}");
    }

    #[test]
    fn vmx_human() {
        let caps = (uapi::KEEL_CAP_SLAT | uapi::KEEL_CAP_PREEMPTION_TIMER) as u64;
        let h = sample(uapi::KEEL_VENDOR_VMX, caps).human();
        assert!(
            h.contains("Intel VMX") && h.contains("EPT") && h.contains("VPIDs"),
            "{h}"
        );
        assert!(h.contains("preemption timer      yes"), "{h}");
        assert!(!h.contains("nrip"), "{h}");
    }
}
