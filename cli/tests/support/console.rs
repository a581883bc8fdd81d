//! A console session without a browser, for the tests that read console pages.

/// A console session over plain HTTP (the cookie jar by hand): sign-in, then pages.
pub(crate) struct Browserless {
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) base: String,
    pub(crate) cookie: String,
    /// The `Set-Cookie` of the sign-in form's answer and of the sign-in's.
    pub(crate) set_cookies: [String; 2],
}

impl Browserless {
    pub(crate) fn sign_in(base: &str, token: &str) -> Browserless {
        let http = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let form = http.get(format!("{base}/console/login")).send().unwrap();
        let login_cookie = form
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("scopecast_console_login="))
            .unwrap();
        let value = login_cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        // The form's hidden field carries the same value (double submit).
        assert!(form.text().unwrap().contains(&value));
        let done = http
            .post(format!("{base}/console/login"))
            .header("cookie", format!("scopecast_console_login={value}"))
            .form(&[("credential", token), ("csrf", value.as_str())])
            .send()
            .unwrap();
        assert_eq!(done.status(), 303);
        let session = done
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("scopecast_console=") && !c.starts_with("scopecast_console=;"))
            .unwrap();
        assert!(
            session.contains("HttpOnly") && session.contains("SameSite=Strict"),
            "{session}"
        );
        Browserless {
            http,
            base: base.to_owned(),
            cookie: session.split(';').next().unwrap().to_owned(),
            set_cookies: [login_cookie, session],
        }
    }

    /// `GET path` with the session's cookie.
    pub(crate) fn response(&self, path: &str) -> reqwest::blocking::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .unwrap()
    }

    /// The status of `GET path` with the session's cookie.
    pub(crate) fn get(&self, path: &str) -> u16 {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}
