//! Channel classification from utm parameters and referrer, for events that carry no channel.
//!
//! GA4 default-channel-grouping style, extended with Chinese marketplace channels. The rules are
//! a table read top to bottom; the first match wins, so more specific rules come first (a
//! Douyin live-stream link is `live_stream`, not `social`).

use super::Channel;

/// One classification rule: matches when any listed medium equals the utm_medium, any listed
/// source equals the utm_source, or any listed referrer host fragment occurs in the referrer.
struct Rule {
    channel: Channel,
    mediums: &'static [&'static str],
    sources: &'static [&'static str],
    referrers: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        channel: Channel::PaidSearch,
        mediums: &["cpc", "ppc", "paidsearch", "paid_search", "sem", "ztc", "zhitongche", "直通车"],
        sources: &["ztc", "zhitongche", "直通车"],
        referrers: &[],
    },
    Rule {
        channel: Channel::Display,
        mediums: &["display", "banner", "cpm", "programmatic", "zuanzhan", "钻展", "yinlimofang", "引力魔方"],
        sources: &["zuanzhan", "钻展", "yinlimofang", "引力魔方"],
        referrers: &[],
    },
    Rule {
        channel: Channel::Affiliate,
        mediums: &["affiliate", "cps", "taobaoke", "淘宝客"],
        sources: &["taobaoke", "淘宝客"],
        referrers: &[],
    },
    Rule {
        channel: Channel::LiveStream,
        mediums: &["live", "livestream", "live_stream", "直播"],
        sources: &["taobao_live", "douyin_live", "kuaishou_live", "直播"],
        referrers: &["live.taobao.com", "live.douyin.com"],
    },
    Rule {
        channel: Channel::Social,
        mediums: &["social", "paid_social", "kol", "influencer", "达人"],
        sources: &["douyin", "抖音", "xiaohongshu", "小红书", "weibo", "微博", "bilibili", "kuaishou", "快手"],
        referrers: &["douyin.com", "xiaohongshu.com", "weibo.com", "weibo.cn", "bilibili.com", "kuaishou.com"],
    },
    Rule {
        channel: Channel::PrivateDomain,
        mediums: &["private", "private_domain", "wechat_group", "私域", "community"],
        sources: &["wechat", "weixin", "微信", "wecom", "企业微信"],
        referrers: &["weixin.qq.com", "work.weixin.qq.com"],
    },
    Rule {
        channel: Channel::EmailSms,
        mediums: &["email", "e-mail", "e_mail", "edm", "sms", "短信"],
        sources: &["email", "newsletter", "sms"],
        referrers: &["mail."],
    },
    Rule {
        channel: Channel::OrganicSearch,
        mediums: &["organic"],
        sources: &[],
        referrers: &["baidu.com", "google.", "bing.com", "so.com", "sogou.com", "sm.cn"],
    },
    Rule { channel: Channel::Referral, mediums: &["referral", "link"], sources: &[], referrers: &[] },
];

/// Classifies a channel from raw traffic-source fields (case-insensitive).
///
/// Nothing at all means `direct`; only a referrer that no rule knows means `referral`; anything
/// else unmatched is `other`.
pub fn classify_channel(utm_source: Option<&str>, utm_medium: Option<&str>, referrer: Option<&str>) -> Channel {
    let norm = |v: Option<&str>| v.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
    let (source, medium, referrer) = (norm(utm_source), norm(utm_medium), norm(referrer));
    for rule in RULES {
        let medium_hit = medium.as_deref().is_some_and(|m| rule.mediums.contains(&m));
        let source_hit = source.as_deref().is_some_and(|s| rule.sources.contains(&s));
        let referrer_hit = referrer.as_deref().is_some_and(|r| rule.referrers.iter().any(|host| r.contains(host)));
        if medium_hit || source_hit || referrer_hit {
            return rule.channel;
        }
    }
    match (&source, &medium, &referrer) {
        (None, None, None) => Channel::Direct,
        (None, None, Some(_)) => Channel::Referral,
        _ => Channel::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_table_of_known_sources() {
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Channel);
        let cases: &[Case<'_>] = &[
            (None, None, None, Channel::Direct),
            (Some("taobao"), Some("cpc"), None, Channel::PaidSearch),
            (Some("直通车"), None, None, Channel::PaidSearch),
            (Some("alimama"), Some("钻展"), None, Channel::Display),
            (Some("alimama"), Some("引力魔方"), None, Channel::Display),
            (Some("taobaoke"), Some("cps"), None, Channel::Affiliate),
            (Some("douyin"), Some("live"), None, Channel::LiveStream),
            (Some("douyin"), Some("kol"), None, Channel::Social),
            (Some("小红书"), None, None, Channel::Social),
            (None, None, Some("https://weibo.com/u/1"), Channel::Social),
            (Some("wechat"), Some("私域"), None, Channel::PrivateDomain),
            (None, None, Some("https://weixin.qq.com/x"), Channel::PrivateDomain),
            (Some("crm"), Some("SMS"), None, Channel::EmailSms),
            (None, None, Some("https://www.baidu.com/s?wd=x"), Channel::OrganicSearch),
            (None, None, Some("https://someblog.example/post"), Channel::Referral),
            (Some("partner"), Some("mystery"), None, Channel::Other),
        ];
        for (source, medium, referrer, expected) in cases {
            assert_eq!(
                classify_channel(*source, *medium, *referrer),
                *expected,
                "source={source:?} medium={medium:?} referrer={referrer:?}"
            );
        }
    }

    #[test]
    fn live_stream_wins_over_social_for_douyin_live() {
        assert_eq!(
            classify_channel(Some("douyin"), Some("直播"), Some("https://live.douyin.com/1")),
            Channel::LiveStream
        );
    }
}
